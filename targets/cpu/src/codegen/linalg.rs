//! `lpc.linear` (f32), `lpc.qgemm` (quantized weights and activations) and
//! `Conv`.
//!
//! `lpc.qgemm`: the prologue rotates, scales and quantizes each activation
//! row once (the runtime's reference codec, so activation blocks are
//! bit-identical to the interpreter's); the body consumes both operands in
//! their packed form: MXFP4 and HiF4 blocks through the integer identities
//! of SPEC §2.5/§3.6 (per-block i32 sums of the 2·E2M1 resp. shifted S1P2
//! integer codes, one scale product per block), HiF8 through an exact
//! 256-entry decode table; blocks accumulate in f64 as in the interpreter.
//! Decode tables are built at compile time from the runtime's reference
//! decoders.

use super::arg;
use super::core::{Cg, CgError, LoopHint, Val, R};
use super::layout;
use inkwell::intrinsics::Intrinsic;
use inkwell::module::Linkage;
use inkwell::types::VectorType;
use inkwell::values::{
    BasicMetadataValueEnum, BasicValueEnum, FloatValue, IntValue, PointerValue, VectorValue,
};
use inkwell::IntPredicate;
use lpc_ir::{DType, Node};
use lpc_runtime::formats::{hif4, hif8, mxfp4};
use lpc_runtime::Format;

impl<'c> Cg<'c> {
    /// A private constant table (created once per module).
    fn table_i8(&self, name: &str, vals: &[i8]) -> PointerValue<'c> {
        if let Some(g) = self.m.get_global(name) {
            return g.as_pointer_value();
        }
        let v: Vec<_> = vals
            .iter()
            .map(|&x| self.i8t().const_int(x as u8 as u64, false))
            .collect();
        let arr = self.i8t().const_array(&v);
        let g = self.m.add_global(arr.get_type(), None, name);
        g.set_initializer(&arr);
        g.set_constant(true);
        g.set_linkage(Linkage::Private);
        g.as_pointer_value()
    }
    fn table_f32(&self, name: &str, vals: &[f32]) -> PointerValue<'c> {
        if let Some(g) = self.m.get_global(name) {
            return g.as_pointer_value();
        }
        let v: Vec<_> = vals.iter().map(|&x| self.cf32(x)).collect();
        let arr = self.f32t().const_array(&v);
        let g = self.m.add_global(arr.get_type(), None, name);
        g.set_initializer(&arr);
        g.set_constant(true);
        g.set_linkage(Linkage::Private);
        g.as_pointer_value()
    }

    fn zext64(&self, v: IntValue<'c>) -> R<IntValue<'c>> {
        Ok(self.b.build_int_z_extend(v, self.i64t(), "")?)
    }
    fn sext64(&self, v: IntValue<'c>) -> R<IntValue<'c>> {
        Ok(self.b.build_int_s_extend(v, self.i64t(), "")?)
    }

    /// `2^e` as an f64 for e in the normal range.
    fn pow2_f64(&self, e: IntValue<'c>) -> R<FloatValue<'c>> {
        let bits = self
            .b
            .build_left_shift(self.add(e, self.c64(1023))?, self.c64(52), "")?;
        Ok(self
            .b
            .build_bit_cast(bits, self.f64t(), "")?
            .into_float_value())
    }

    /// Decodes a row of `k` HiF8 codes to exact f32 values (a table built
    /// from the reference decoder), zero-padded to `k16` (a multiple of 64).
    fn hif8_decode_row(
        &mut self,
        p: PointerValue<'c>,
        lay: WLayout,
        k: i64,
        k16: i64,
        out: PointerValue<'c>,
    ) -> R<()> {
        let vals: Vec<f32> = (0..=255u8).map(hif8::decode).collect();
        let lut = self.table_f32("lpc.hif8", &vals);
        self.for_n(self.c64(k), |cg, i| {
            // CPU layout: element 64c + r sits at byte 64c + 16·(r/4 % 4)
            // + 4·(r/16) + r % 4 (see `layout::hif8_element`).
            let at = if matches!(lay, WLayout::Cpu { .. }) {
                let r = cg.b.build_and(i, cg.c64(63), "")?;
                let base = cg.sub(i, r)?;
                let q = cg.b.build_and(
                    cg.b.build_right_shift(r, cg.c64(2), false, "")?,
                    cg.c64(3),
                    "",
                )?;
                let l = cg.b.build_right_shift(r, cg.c64(4), false, "")?;
                let ii = cg.b.build_and(r, cg.c64(3), "")?;
                let pos = cg.add(cg.add(cg.mul(q, cg.c64(16))?, cg.mul(l, cg.c64(4))?)?, ii)?;
                cg.add(base, pos)?
            } else {
                i
            };
            let v = cg.load_f32(lut, cg.zext64(cg.load_u8(p, at)?)?)?;
            cg.store(DType::F32, out, i, v.into())
        })?;
        if k16 > k {
            let pad = self.gep(DType::F32, out, self.c64(k))?;
            self.b
                .build_memset(pad, 4, self.i8t().const_zero(), self.c64(4 * (k16 - k)))?;
        }
        Ok(())
    }

    /// The f64 dot product of an f32 row with a packed weight row of `k`
    /// elements (weight-only quantization): each weight element decoded to
    /// its exact value.
    fn mixed_dot(
        &mut self,
        f: Format,
        x: PointerValue<'c>,
        w: PointerValue<'c>,
        k: i64,
        acc: PointerValue<'c>,
    ) -> R<FloatValue<'c>> {
        let f64t = self.f64t();
        self.b.build_store(acc, self.cf64(0.0))?;
        let add = |cg: &Cg<'c>, i: IntValue<'c>, v: FloatValue<'c>| -> R<()> {
            let xv = cg.fext(cg.load_f32(x, i)?)?;
            let old = cg.b.build_load(f64t, acc, "")?.into_float_value();
            cg.b.build_store(acc, cg.fadd(old, cg.fmul(xv, v)?)?)?;
            Ok(())
        };
        match f {
            Format::Mxfp4(_) => {
                let lut = self.table_i8("lpc.e2m1x2", &mxfp4::E2M1_X2);
                let nb = (k + 31) / 32;
                self.for_n(self.c64(nb), |cg, t| {
                    let base = cg.mul(t, cg.c64(17))?;
                    let sw = cg.zext64(cg.load_u8(w, base)?)?;
                    let sc = cg.pow2_f64(cg.sub(sw, cg.c64(128))?)?;
                    let poisoned = cg.icmp(IntPredicate::EQ, sw, cg.c64(255))?;
                    let sc = cg.select_f(poisoned, cg.cf64(f64::NAN), sc)?;
                    let lo = cg.mul(t, cg.c64(32))?;
                    let n = cg.smin(cg.c64(32), cg.sub(cg.c64(k), lo)?)?;
                    cg.for_n(n, |cg, i| {
                        let at = cg.add(base, cg.add(cg.c64(1), cg.sdiv(i, cg.c64(2))?)?)?;
                        let byte = cg.zext64(cg.load_u8(w, at)?)?;
                        let sh = cg.mul(cg.srem(i, cg.c64(2))?, cg.c64(4))?;
                        let nib = cg.b.build_and(
                            cg.b.build_right_shift(byte, sh, false, "")?,
                            cg.c64(15),
                            "",
                        )?;
                        let c = cg.sext64(cg.load_u8(lut, nib)?)?;
                        let v = cg.fmul(cg.si_to_f64(c)?, sc)?;
                        add(cg, cg.add(lo, i)?, v)
                    })
                })?;
            }
            Format::Hif4(_) => {
                let scales: Vec<f32> = (0..=255u8).map(hif4::e6m2_to_f32).collect();
                let st = self.table_f32("lpc.e6m2", &scales);
                let nb = (k + 63) / 64;
                self.for_n(self.c64(nb), |cg, t| {
                    let base = cg.mul(t, cg.c64(36))?;
                    let sc = cg.fext(cg.load_f32(st, cg.zext64(cg.load_u8(w, base)?)?)?)?;
                    let sc = cg.fdiv(sc, cg.cf64(4.0))?;
                    let lo = cg.mul(t, cg.c64(64))?;
                    let n = cg.smin(cg.c64(64), cg.sub(cg.c64(k), lo)?)?;
                    cg.for_n(n, |cg, i| {
                        let c = cg.hif4_code(w, base, i)?;
                        add(cg, cg.add(lo, i)?, cg.fmul(cg.si_to_f64(c)?, sc)?)
                    })
                })?;
            }
            Format::Hif8(_) => {
                let vals: Vec<f32> = (0..=255u8).map(hif8::decode).collect();
                let lut = self.table_f32("lpc.hif8", &vals);
                self.for_n(self.c64(k), |cg, i| {
                    let v = cg.fext(cg.load_f32(lut, cg.zext64(cg.load_u8(w, i)?)?)?)?;
                    add(cg, i, v)
                })?;
            }
        }
        Ok(self.b.build_load(f64t, acc, "")?.into_float_value())
    }

    /// The integer code of element `i` of the HiF4 unit at byte `base`:
    /// `±((n & 7) << (E1_8 + E1_16))` (SPEC §3.6).
    fn hif4_code(
        &self,
        p: PointerValue<'c>,
        base: IntValue<'c>,
        i: IntValue<'c>,
    ) -> R<IntValue<'c>> {
        let cg = self;
        let byte =
            cg.zext64(cg.load_u8(p, cg.add(base, cg.add(cg.c64(4), cg.sdiv(i, cg.c64(2))?)?)?)?)?;
        let sh = cg.mul(cg.srem(i, cg.c64(2))?, cg.c64(4))?;
        let nib =
            cg.b.build_and(cg.b.build_right_shift(byte, sh, false, "")?, cg.c64(15), "")?;
        let g = cg.sdiv(i, cg.c64(8))?;
        let m1 = cg.zext64(cg.load_u8(p, cg.add(base, cg.c64(1))?)?)?;
        let e8 = cg.b.build_and(
            cg.b.build_right_shift(m1, cg.sub(cg.c64(7), g)?, false, "")?,
            cg.c64(1),
            "",
        )?;
        let h = cg.sdiv(i, cg.c64(4))?;
        let m2 =
            cg.zext64(cg.load_u8(p, cg.add(base, cg.add(cg.c64(2), cg.sdiv(h, cg.c64(8))?)?)?)?)?;
        let e16 = cg.b.build_and(
            cg.b.build_right_shift(m2, cg.sub(cg.c64(7), cg.srem(h, cg.c64(8))?)?, false, "")?,
            cg.c64(1),
            "",
        )?;
        let mag =
            cg.b.build_left_shift(cg.b.build_and(nib, cg.c64(7), "")?, cg.add(e8, e16)?, "")?;
        let neg = cg.icmp(
            IntPredicate::NE,
            cg.b.build_and(nib, cg.c64(8), "")?,
            cg.c64(0),
        )?;
        cg.select_i(neg, cg.sub(cg.c64(0), mag)?, mag)
    }

    /// An unaligned vector load of `n` i8 at byte `off` of `p`.
    fn load_i8xn(&self, p: PointerValue<'c>, off: IntValue<'c>, n: u32) -> R<VectorValue<'c>> {
        let q = self.gep_bytes(p, off)?;
        let v = self
            .b
            .build_load(self.i8t().vec_type(n), q, "")?
            .into_vector_value();
        if let Some(i) = v.as_instruction() {
            let _ = i.set_alignment(1);
        }
        Ok(v)
    }
    fn store_vec(&self, p: PointerValue<'c>, off: IntValue<'c>, v: VectorValue<'c>) -> R<()> {
        let q = self.gep_bytes(p, off)?;
        let st = self.b.build_store(q, v)?;
        let _ = st.set_alignment(1);
        Ok(())
    }
    /// `n` f32 lanes at byte offset `off` (4-byte aligned).
    fn load_vec_f32(&self, p: PointerValue<'c>, off: IntValue<'c>, n: u32) -> R<VectorValue<'c>> {
        self.load_vec(p, off, self.f32t().vec_type(n), 4)
    }
    fn store_vec_f32(&self, p: PointerValue<'c>, off: IntValue<'c>, v: VectorValue<'c>) -> R<()> {
        self.store_vec_aligned(p, off, v, 4)
    }
    /// `v` in every one of `n` lanes.
    pub(crate) fn splat_f32(&self, v: FloatValue<'c>, n: u32) -> R<VectorValue<'c>> {
        let t = self.f32t().vec_type(n);
        let ins = self
            .b
            .build_insert_element(t.get_undef(), v, self.i32t().const_zero(), "")?;
        let z = VectorType::const_vector(&vec![self.i32t().const_zero(); n as usize]);
        Ok(self.b.build_shuffle_vector(ins, t.get_undef(), z, "")?)
    }
    /// A vector load of `t` at byte offset `off` with alignment `align`.
    pub(crate) fn load_vec(
        &self,
        p: PointerValue<'c>,
        off: IntValue<'c>,
        t: VectorType<'c>,
        align: u32,
    ) -> R<VectorValue<'c>> {
        let q = self.gep_bytes(p, off)?;
        let v = self.b.build_load(t, q, "")?.into_vector_value();
        if let Some(i) = v.as_instruction() {
            let _ = i.set_alignment(align);
        }
        Ok(v)
    }
    pub(crate) fn store_vec_aligned(
        &self,
        p: PointerValue<'c>,
        off: IntValue<'c>,
        v: VectorValue<'c>,
        align: u32,
    ) -> R<()> {
        let q = self.gep_bytes(p, off)?;
        let st = self.b.build_store(q, v)?;
        let _ = st.set_alignment(align);
        Ok(())
    }
    /// `<16 x f32>` at byte `off` of `p`; with a mask, only its lanes
    /// (the others read nothing and are zero).
    fn load_f32x16(
        &self,
        p: PointerValue<'c>,
        off: IntValue<'c>,
        mask: Option<VectorValue<'c>>,
    ) -> R<VectorValue<'c>> {
        match mask {
            None => self.load_vec_f32(p, off, 16),
            Some(m) => {
                let zero = self.f32t().vec_type(16).const_zero();
                self.masked_load_f32x16(p, off, m, zero)
            }
        }
    }
    /// The lanes of `mask` of the `<16 x f32>` at byte `off` of `p`, the
    /// others from `fill` (nothing is read for them).
    pub(crate) fn masked_load_f32x16(
        &self,
        p: PointerValue<'c>,
        off: IntValue<'c>,
        mask: VectorValue<'c>,
        fill: VectorValue<'c>,
    ) -> R<VectorValue<'c>> {
        let t = self.f32t().vec_type(16);
        let q = self.gep_bytes(p, off)?;
        let f = Intrinsic::find("llvm.masked.load")
            .and_then(|i| i.get_declaration(&self.m, &[t.into(), self.ptrt().into()]))
            .ok_or_else(|| CgError::Graph("LLVM has no intrinsic llvm.masked.load".into()))?;
        // Before LLVM 22 the alignment is an argument; since, a pointer
        // attribute whose absence means 1.
        let mut args: Vec<BasicMetadataValueEnum> = vec![q.into()];
        if f.count_params() == 4 {
            args.push(self.i32t().const_int(4, false).into());
        }
        args.push(mask.into());
        args.push(fill.into());
        Ok(self.call_value(f, &args)?.into_vector_value())
    }
    /// Stores `v` (`<16 x f32>`) at byte `off` of `p`; with a mask, only
    /// its lanes.
    pub(crate) fn store_f32x16(
        &self,
        p: PointerValue<'c>,
        off: IntValue<'c>,
        v: VectorValue<'c>,
        mask: Option<VectorValue<'c>>,
    ) -> R<()> {
        let Some(m) = mask else {
            return self.store_vec_f32(p, off, v);
        };
        let q = self.gep_bytes(p, off)?;
        let f = Intrinsic::find("llvm.masked.store")
            .and_then(|i| i.get_declaration(&self.m, &[v.get_type().into(), self.ptrt().into()]))
            .ok_or_else(|| CgError::Graph("LLVM has no intrinsic llvm.masked.store".into()))?;
        let mut args: Vec<BasicMetadataValueEnum> = vec![v.into(), q.into()];
        if f.count_params() == 4 {
            args.push(self.i32t().const_int(4, false).into());
        }
        args.push(m.into());
        self.call_void(f, &args)
    }
    /// `vpdpbusd`: per i32 lane, the sum of four u8·s8 products of `a`
    /// (unsigned) and `b` (signed), 64 bytes each, added to `acc`.
    fn vpdpbusd(
        &self,
        acc: VectorValue<'c>,
        a: VectorValue<'c>,
        b: VectorValue<'c>,
    ) -> R<VectorValue<'c>> {
        // LLVM 22 types the byte operands as <64 x i8>.
        Ok(self
            .intrinsic(
                "llvm.x86.avx512.vpdpbusd.512",
                &[],
                &[acc.into(), a.into(), b.into()],
            )?
            .into_vector_value())
    }
    /// `vdpbf16ps`: per f32 lane, the two products of the bf16 pairs in the
    /// lanes of `a` and `b` (`<16 x i32>`, low half first) added to `acc`.
    fn vdpbf16ps(
        &self,
        acc: VectorValue<'c>,
        a: VectorValue<'c>,
        b: VectorValue<'c>,
    ) -> R<VectorValue<'c>> {
        let name = "llvm.x86.avx512bf16.dpbf16ps.512";
        let f = Intrinsic::find(name)
            .and_then(|i| i.get_declaration(&self.m, &[]))
            .ok_or_else(|| CgError::Graph(format!("LLVM has no intrinsic {name}")))?;
        // LLVM 17 and later type the pairs as <32 x bfloat>, earlier as
        // <16 x i32>: the operands take the declaration's type.
        let Some(inkwell::types::BasicMetadataTypeEnum::VectorType(t)) =
            f.get_type().get_param_types().get(1).copied()
        else {
            return Err(CgError::Graph(format!("{name} takes no vector pairs")));
        };
        let a = self.b.build_bit_cast(a, t, "")?;
        let b = self.b.build_bit_cast(b, t, "")?;
        Ok(self
            .call_value(f, &[acc.into(), a.into(), b.into()])?
            .into_vector_value())
    }
    /// `a · b + c` lane-wise, fused.
    pub(crate) fn fma_vec(
        &self,
        a: VectorValue<'c>,
        b: VectorValue<'c>,
        c: VectorValue<'c>,
    ) -> R<VectorValue<'c>> {
        Ok(self
            .intrinsic(
                "llvm.fma",
                &[a.get_type().into()],
                &[a.into(), b.into(), c.into()],
            )?
            .into_vector_value())
    }

    /// The sum of a vector's lanes, in any order (a tree).
    fn reduce_fadd(&self, v: VectorValue<'c>) -> R<FloatValue<'c>> {
        let r = self.intrinsic(
            "llvm.vector.reduce.fadd",
            &[v.get_type().into()],
            &[self.cf32(-0.0).into(), v.into()],
        )?;
        let r = r.into_float_value();
        if let Some(i) = r.as_instruction() {
            let _ = i.set_fast_math_flags(inkwell::values::FastMathFlags::AllowReassoc);
        }
        Ok(r)
    }

    /// Writes the f64 block scales `s64[0..nb]` as f32, each repeated over
    /// its block's `block/4` i32 lanes, into `out` (`lanes` f32).
    fn replicate_scales(
        &mut self,
        s64: PointerValue<'c>,
        nb: i64,
        block: i64,
        lanes: i64,
        out: PointerValue<'c>,
    ) -> R<()> {
        let per = (block / 4) as u32;
        let t = self.f32t().vec_type(per);
        self.for_n(self.c64(nb), |cg, b| {
            let v = cg.ftrunc(cg.load(DType::F64, s64, b)?.into_float_value())?;
            let undef = t.get_undef();
            let ins =
                cg.b.build_insert_element(undef, v, cg.i32t().const_zero(), "")?;
            let mask = VectorType::const_vector(&vec![cg.i32t().const_zero(); per as usize]);
            let splat = cg.b.build_shuffle_vector(ins, undef, mask, "")?;
            cg.store_vec_aligned(out, cg.mul(b, cg.c64(4 * per as i64))?, splat, 4)
        })?;
        // Padding lanes (a last half chunk) hold zeros.
        let used = nb * per as i64;
        if used < lanes {
            let pad = self.gep(DType::F32, out, self.c64(used))?;
            self.b.build_memset(
                pad,
                4,
                self.i8t().const_zero(),
                self.c64(4 * (lanes - used)),
            )?;
        }
        Ok(())
    }
    /// `v` (i32) in every one of `n` lanes.
    pub(crate) fn splat_i32(&self, v: IntValue<'c>, n: u32) -> R<VectorValue<'c>> {
        let t = self.i32t().vec_type(n);
        let ins = self
            .b
            .build_insert_element(t.get_undef(), v, self.i32t().const_zero(), "")?;
        let z = VectorType::const_vector(&vec![self.i32t().const_zero(); n as usize]);
        Ok(self.b.build_shuffle_vector(ins, t.get_undef(), z, "")?)
    }
    /// MXFP4 block pairs of the panel GEMM: for the two blocks' scales
    /// `s0`, `s1` (f64 powers of two), whether they pair (`allowed` and
    /// exponents at most `PAIR_MAX_SHIFT` apart), and if so the left shift
    /// of each block's codes that puts both on the smaller scale (0 for the
    /// smaller one, and for both when they do not pair), and the scales each
    /// block then uses.
    fn pair_shifts(
        &self,
        s0: FloatValue<'c>,
        s1: FloatValue<'c>,
        allowed: IntValue<'c>,
    ) -> R<(IntValue<'c>, [IntValue<'c>; 2], [FloatValue<'c>; 2])> {
        let exp = |s: FloatValue<'c>| -> R<IntValue<'c>> {
            let b = self.b.build_bit_cast(s, self.i64t(), "")?.into_int_value();
            let e = self.b.build_right_shift(b, self.c64(52), false, "")?;
            Ok(self.b.build_and(e, self.c64(0x7ff), "")?)
        };
        // NaN (exponent field 0x7ff) never comes within PAIR_MAX_SHIFT.
        let (e0, e1) = (exp(s0)?, exp(s1)?);
        let (ok, sh) = self.pair_rule(e0, e1, allowed)?;
        let s1_larger = self.icmp(IntPredicate::SGT, e1, e0)?;
        let small = self.select_f(s1_larger, s0, s1)?;
        Ok((
            ok,
            sh,
            [self.select_f(ok, small, s0)?, self.select_f(ok, small, s1)?],
        ))
    }
    /// The pairing rule on two blocks' scale exponents (i64): they pair when
    /// `allowed` and at most `PAIR_MAX_SHIFT` apart; then the block with the
    /// larger exponent shifts its codes left by the difference (the shifts
    /// are 0 otherwise).
    fn pair_rule(
        &self,
        e0: IntValue<'c>,
        e1: IntValue<'c>,
        allowed: IntValue<'c>,
    ) -> R<(IntValue<'c>, [IntValue<'c>; 2])> {
        let d = self.sub(e1, e0)?;
        let lo = self.icmp(IntPredicate::SGE, d, self.c64(-PAIR_MAX_SHIFT))?;
        let hi = self.icmp(IntPredicate::SLE, d, self.c64(PAIR_MAX_SHIFT))?;
        let ok = self.and(self.and(lo, hi)?, allowed)?;
        let z = self.c64(0);
        let sh0 = self.select_i(ok, self.smax(self.sub(z, d)?, z)?, z)?;
        let sh1 = self.select_i(ok, self.smax(d, z)?, z)?;
        Ok((ok, [sh0, sh1]))
    }
    /// `v` (i8 lanes) shifted left by the run-time amount `sh` (i64).
    fn shl_i8(&self, v: VectorValue<'c>, sh: IntValue<'c>) -> R<VectorValue<'c>> {
        let n = v.get_type().get_size();
        let t = self.i8t().vec_type(n);
        let s8 = self.b.build_int_truncate(sh, self.i8t(), "")?;
        let ins = self
            .b
            .build_insert_element(t.get_undef(), s8, self.i32t().const_zero(), "")?;
        let z = VectorType::const_vector(&vec![self.i32t().const_zero(); n as usize]);
        let sp = self.b.build_shuffle_vector(ins, t.get_undef(), z, "")?;
        Ok(self.b.build_left_shift(v, sp, "")?)
    }
    fn splat_i8(&self, x: u8, n: u32) -> VectorValue<'c> {
        let c = self.i8t().const_int(x as u64, false);
        VectorType::const_vector(&vec![c; n as usize])
    }
    /// The constant `x` in `n` i32 lanes.
    fn splat_i32c(&self, x: u32, n: u32) -> VectorValue<'c> {
        let c = self.i32t().const_int(x as u64, false);
        VectorType::const_vector(&vec![c; n as usize])
    }

    /// The integer dot product of two i8 code vectors of `n` lanes (i16
    /// products, i32 sum: vpmaddwd-shaped for LLVM).
    fn dot_i8(&self, a: VectorValue<'c>, b: VectorValue<'c>, n: u32) -> R<IntValue<'c>> {
        let i16v = self.cx.i16_type().vec_type(n);
        let i32v = self.i32t().vec_type(n);
        let (a, b) = (
            self.b.build_int_s_extend(a, i16v, "")?,
            self.b.build_int_s_extend(b, i16v, "")?,
        );
        let p = self
            .b
            .build_int_s_extend(self.b.build_int_mul(a, b, "")?, i32v, "")?;
        Ok(self
            .intrinsic("llvm.vector.reduce.add", &[i32v.into()], &[p.into()])?
            .into_int_value())
    }

    /// Decodes block `t` of a packed row into i8 integer codes (written at
    /// `codes + t·block`) and its scale factor (`scales[t]`, f64): MXFP4
    /// `2·E2M1` codes through an in-register table (pshufb) and `2^(s-128)`;
    /// HiF4 `±((n & 7) << (E1_8 + E1_16))` and `S/4`. The product of two
    /// blocks is then `Σ a·b · scale_a · scale_b`, exactly.
    fn decode_block(
        &mut self,
        f: Format,
        p: PointerValue<'c>,
        t: IntValue<'c>,
        codes: PointerValue<'c>,
        scales: PointerValue<'c>,
    ) -> R<()> {
        let (v, sc) = self.decode_codes(f, p, t, None)?;
        self.store_vec(codes, self.mul(t, self.c64(f.block_len() as i64))?, v)?;
        self.store(DType::F64, scales, t, sc.into())
    }

    /// The `2n` nibbles of `n` bytes at `p + at` in element order (the
    /// formats' layout: element `2i` in byte `i`'s low nibble, `2i+1` in its
    /// high nibble).
    fn spec_nibbles(&self, p: PointerValue<'c>, at: IntValue<'c>, n: u32) -> R<VectorValue<'c>> {
        let bytes = self.load_i8xn(p, at, n)?;
        let lo = self.b.build_and(bytes, self.splat_i8(15, n), "")?;
        let hi = self
            .b
            .build_right_shift(bytes, self.splat_i8(4, n), false, "")?;
        let mask: Vec<_> = (0..2 * n as u64)
            .map(|i| {
                let src = if i % 2 == 0 { i / 2 } else { n as u64 + i / 2 };
                self.i32t().const_int(src, false)
            })
            .collect();
        Ok(self
            .b
            .build_shuffle_vector(lo, hi, VectorType::const_vector(&mask), "")?)
    }

    /// The biased E8M0 scale byte of MXFP4 block `t` of a row in the
    /// formats' layout (255: poisoned).
    fn mxfp4_scale_byte(&self, p: PointerValue<'c>, t: IntValue<'c>) -> R<IntValue<'c>> {
        self.zext64(self.load_u8(p, self.mul(t, self.c64(17))?)?)
    }
    /// Block `t` of a packed row as a vector of i8 codes (block length
    /// lanes) and its f64 scale factor (see [`Self::decode_block`]); MXFP4
    /// codes shifted left by `shift` when given (the panel GEMM's pairs).
    fn decode_codes(
        &mut self,
        f: Format,
        p: PointerValue<'c>,
        t: IntValue<'c>,
        shift: Option<IntValue<'c>>,
    ) -> R<(VectorValue<'c>, FloatValue<'c>)> {
        if shift.is_some() && !matches!(f, Format::Mxfp4(_)) {
            return self.err("shifted codes are MXFP4 only");
        }
        match f {
            Format::Mxfp4(_) => {
                let lutv: Vec<_> = mxfp4::E2M1_X2
                    .iter()
                    .map(|&x| self.i8t().const_int(x as u8 as u64, false))
                    .collect();
                let sb = self.mxfp4_scale_byte(p, t)?;
                let base = self.mul(t, self.c64(17))?;
                let nib = self.spec_nibbles(p, self.add(base, self.c64(1))?, 16)?;
                // 2·E2M1 codes from a table in each 128-bit lane (shifted
                // left by `shift`: the table `shift` rows down).
                let lut = match shift {
                    None => VectorType::const_vector(&[lutv.clone(), lutv].concat()),
                    Some(sh) => {
                        let rows: Vec<i8> = (0..=PAIR_MAX_SHIFT)
                            .flat_map(|k| mxfp4::E2M1_X2.iter().map(move |&x| x << k))
                            .collect();
                        let tab = self.table_i8("lpc.e2m1x2_shl", &rows);
                        let row = self.load_vec(
                            tab,
                            self.mul(sh, self.c64(16))?,
                            self.i8t().vec_type(16),
                            1,
                        )?;
                        let m: Vec<_> = (0..32)
                            .map(|i| self.i32t().const_int(i % 16, false))
                            .collect();
                        self.b
                            .build_shuffle_vector(row, row, VectorType::const_vector(&m), "")?
                    }
                };
                let inter = self
                    .intrinsic("llvm.x86.avx2.pshuf.b", &[], &[lut.into(), nib.into()])?
                    .into_vector_value();
                let sc = self.pow2_f64(self.sub(sb, self.c64(128))?)?;
                let poisoned = self.icmp(IntPredicate::EQ, sb, self.c64(255))?;
                let sc = self.select_f(poisoned, self.cf64(f64::NAN), sc)?;
                Ok((inter, sc))
            }
            Format::Hif4(_) => {
                // Vector form of hif4_code for the 64 elements at once.
                let base = self.mul(t, self.c64(36))?;
                let nib = self.spec_nibbles(p, self.add(base, self.c64(4))?, 32)?;
                let splat_byte = |cg: &Cg<'c>, at: i64| -> R<VectorValue<'c>> {
                    let v = cg.load_u8(p, cg.add(base, cg.c64(at))?)?;
                    let t = cg.i8t().vec_type(64);
                    let ins =
                        cg.b.build_insert_element(t.get_undef(), v, cg.i32t().const_zero(), "")?;
                    let z = VectorType::const_vector(&vec![cg.i32t().const_zero(); 64]);
                    Ok(cg.b.build_shuffle_vector(ins, t.get_undef(), z, "")?)
                };
                let consts = |f: &dyn Fn(u64) -> u64| -> VectorValue<'c> {
                    let v: Vec<_> = (0..64u64)
                        .map(|i| self.i8t().const_int(f(i), false))
                        .collect();
                    VectorType::const_vector(&v)
                };
                let sh = {
                    let one = self.splat_i8(1, 64);
                    let m1 = splat_byte(self, 1)?;
                    let e8 = self
                        .b
                        .build_right_shift(m1, consts(&|i| 7 - i / 8), false, "")?;
                    let e8 = self.b.build_and(e8, one, "")?;
                    let (m2, m3) = (splat_byte(self, 2)?, splat_byte(self, 3)?);
                    let first = consts(&|i| (i < 32) as u64);
                    let is_first = self.b.build_int_compare(
                        IntPredicate::NE,
                        first,
                        self.splat_i8(0, 64),
                        "",
                    )?;
                    let m23 = self
                        .b
                        .build_select(is_first, m2, m3, "")?
                        .into_vector_value();
                    let e16 =
                        self.b
                            .build_right_shift(m23, consts(&|i| 7 - (i / 4) % 8), false, "")?;
                    let e16 = self.b.build_and(e16, one, "")?;
                    self.b.build_int_add(e8, e16, "")?
                };
                let mag = self.b.build_and(nib, self.splat_i8(7, 64), "")?;
                let mag = self.b.build_left_shift(mag, sh, "")?;
                let sign = self.b.build_and(nib, self.splat_i8(8, 64), "")?;
                let neg =
                    self.b
                        .build_int_compare(IntPredicate::NE, sign, self.splat_i8(0, 64), "")?;
                let negmag = self.b.build_int_sub(self.splat_i8(0, 64), mag, "")?;
                let code = self
                    .b
                    .build_select(neg, negmag, mag, "")?
                    .into_vector_value();

                let scales_t: Vec<f32> = (0..=255u8).map(hif4::e6m2_to_f32).collect();
                let st = self.table_f32("lpc.e6m2", &scales_t);
                let s = self.fext(self.load_f32(st, self.zext64(self.load_u8(p, base)?)?)?)?;
                let s = self.fdiv(s, self.cf64(4.0))?;
                Ok((code, s))
            }
            Format::Hif8(_) => self.err("HiF8 has no block codes"),
        }
    }

    fn epilogue(&self, v: FloatValue<'c>, act: Option<&str>) -> R<FloatValue<'c>> {
        Ok(match act {
            None => v,
            Some("silu") => self.silu(v)?,
            Some("gelu") => self.gelu(v, false)?,
            Some("gelu_tanh") => self.gelu(v, true)?,
            Some(a) => return self.err(format!("unknown epilogue activation `{a}`")),
        })
    }
}

/// How a packed weight row is laid out: the formats' own layout, or the
/// CPU layout of `layout.rs` (rows of `k` elements).
#[derive(Clone, Copy, Debug)]
enum WLayout {
    Spec,
    Cpu { k: i64 },
}

fn format_attr(cg: &Cg, n: &Node, key: &str, mode: &str) -> R<Option<Format>> {
    let Some(name) = n.string(key) else {
        return cg.err(format!("`{key}` attribute is required"));
    };
    if name == "none" || name == "f32" {
        return Ok(None);
    }
    let m = n.string(mode);
    let parsed = match name {
        "hif4" => Format::parse(name, None, m),
        _ => Format::parse(name, m, None),
    };
    match parsed {
        Ok(f) => Ok(Some(f)),
        Err(e) => cg.err(e.to_string()),
    }
}

fn linear<'c>(cg: &mut Cg<'c>, n: &Node, ins: &[Option<Val<'c>>]) -> R<Val<'c>> {
    let x = arg(cg, ins, 0)?.clone();
    if x.dt != DType::F32 || x.rank() == 0 {
        return cg.err("x must be an f32 tensor of rank >= 1");
    }
    let parts = n.int("parts").unwrap_or(1).max(1) as usize;
    let bf16 = n.int("bf16").unwrap_or(0) != 0;
    let tr = n.int("transposed").unwrap_or(0) != 0 && !bf16;
    let k = *x.dims.last().expect("rank >= 1");
    let rows = cg.product(&x.dims[..x.rank() - 1])?;
    // bf16 (`bf16-linear`): weights in pairs along K, `[ceil(K/2), N, 2]`.
    let kp = cg.sdiv(cg.add(k, cg.c64(1))?, cg.c64(2))?;
    let mut ws = Vec::new();
    let mut ntot = cg.c64(0);
    for p in 0..parts {
        let w = arg(cg, ins, 1 + p)?.clone();
        if bf16 && (w.rank() != 3 || w.dt != DType::Bf16) {
            return cg.err("bf16 weights must be [K/2, N, 2] bf16");
        }
        if !bf16 && (w.rank() != 2 || w.dt != DType::F32) {
            return cg.err("weights must be 2-D f32");
        }
        let (kin, nn) = if bf16 {
            (w.dims[0], w.dims[1])
        } else if tr {
            (w.dims[1], w.dims[0])
        } else {
            (w.dims[0], w.dims[1])
        };
        let ok = cg.icmp(IntPredicate::EQ, kin, if bf16 { kp } else { k })?;
        cg.check(ok, "x does not match the weight's input features")?;
        ws.push((w, nn, ntot));
        ntot = cg.add(ntot, nn)?;
    }
    let bias = ins.get(1 + parts).cloned().flatten();
    if let Some(b) = &bias {
        let ok = cg.icmp(IntPredicate::EQ, cg.product(&b.dims)?, ntot)?;
        cg.check(ok, "bias length differs from the output features")?;
    }
    let y = cg.alloc(DType::F32, cg.mul(rows, ntot)?)?;
    // bf16: the rows rounded to bf16 pairs once, then the f32 GEMM's loops
    // over pairs (one dword of x, one of W per column) with `vdpbf16ps`.
    let (xs, kk, madd) = if bf16 {
        let xb = cg.alloc(DType::I32, cg.smax(cg.mul(rows, kp)?, cg.c64(1))?)?;
        bf16_pairs(cg, x.ptr, xb, rows, k, kp)?;
        let m = if cg.bf16_512 {
            Madd::Bf16
        } else {
            Madd::Bf16Fma
        };
        (xb, kp, m)
    } else {
        (x.ptr, k, Madd::F32)
    };
    for (w, nn, off) in ws {
        let shape = GemmShape {
            rows,
            k: kk,
            n: nn,
            ldy: ntot,
            off,
        };
        gemm_f32(
            cg,
            xs,
            w.ptr,
            y,
            shape,
            tr,
            madd,
            bias.as_ref().map(|b| b.ptr),
        )?;
    }
    if bf16 {
        cg.release(xs)?;
    }
    let mut dims = x.dims.clone();
    *dims.last_mut().expect("rank >= 1") = ntot;
    Ok(Val {
        ptr: y,
        dims,
        dt: DType::F32,
    })
}

/// K per slice of the f32 GEMM's tiles: 128 × 64 columns × 4 bytes of W
/// (32 KB) fit L1.
const F32_K_BLOCK: i64 = 128;

/// The shape of one [`gemm_f32`]: `rows × k` activations, `n` output
/// columns written at column `off` of output rows `ldy` long.
#[derive(Clone, Copy)]
struct GemmShape<'c> {
    rows: IntValue<'c>,
    k: IntValue<'c>,
    n: IntValue<'c>,
    ldy: IntValue<'c>,
    off: IntValue<'c>,
}

/// The multiply-add of [`gemm_f32`]'s tiles.
#[derive(Clone, Copy, PartialEq)]
enum Madd {
    /// f32 elements: one fused multiply-add.
    F32,
    /// Elements are bf16 pairs (the even K low): `vdpbf16ps`.
    Bf16,
    /// bf16 pairs without AVX-512 BF16: both halves widened to f32 (exact),
    /// the even product added first, then the odd, each fused.
    Bf16Fma,
}

impl Madd {
    /// An operand (x broadcast or a W vector) as the multiply-add takes it.
    fn prep<'c>(self, cg: &Cg<'c>, v: VectorValue<'c>) -> R<Vec<VectorValue<'c>>> {
        if self != Self::Bf16Fma {
            return Ok(vec![v]);
        }
        let i32x16 = cg.i32t().vec_type(16);
        let f32x16 = cg.f32t().vec_type(16);
        let u = cg.b.build_bit_cast(v, i32x16, "")?.into_vector_value();
        let even = cg.b.build_left_shift(u, cg.splat_i32c(16, 16), "")?;
        let odd = cg.b.build_and(u, cg.splat_i32c(0xffff_0000, 16), "")?;
        [even, odd]
            .iter()
            .map(|h| Ok(cg.b.build_bit_cast(*h, f32x16, "")?.into_vector_value()))
            .collect::<R<_>>()
    }
    /// `acc + a · w` over the prepared operands.
    fn apply<'c>(
        self,
        cg: &Cg<'c>,
        a: &[VectorValue<'c>],
        w: &[VectorValue<'c>],
        acc: VectorValue<'c>,
    ) -> R<VectorValue<'c>> {
        match self {
            Self::F32 => cg.fma_vec(a[0], w[0], acc),
            Self::Bf16 => cg.vdpbf16ps(acc, a[0], w[0]),
            Self::Bf16Fma => {
                let e = cg.fma_vec(a[0], w[0], acc)?;
                cg.fma_vec(a[1], w[1], e)
            }
        }
    }
}

/// `x` (`rows × k` f32) rounded to bf16 (to nearest even; NaNs stay NaNs,
/// quiet) into `xb` as `rows × kp` dwords of pairs, the even K low and a
/// zero high half past an odd K: `half::bf16::from_f32`'s bits.
fn bf16_pairs<'c>(
    cg: &mut Cg<'c>,
    x: PointerValue<'c>,
    xb: PointerValue<'c>,
    rows: IntValue<'c>,
    k: IntValue<'c>,
    kp: IntValue<'c>,
) -> R<()> {
    let i32x32 = cg.i32t().vec_type(32);
    let i16x32 = cg.cx.i16_type().vec_type(32);
    let i32x16 = cg.i32t().vec_type(16);
    // 16 pairs (32 elements) at a time, then one pair at a time.
    let nc = cg.sdiv(k, cg.c64(32))?;
    cg.for_n(rows, |cg, r| {
        let xrow = cg.mul(r, k)?;
        let brow = cg.mul(r, kp)?;
        cg.for_n(nc, |cg, c| {
            let at = cg.mul(cg.add(xrow, cg.mul(c, cg.c64(32))?)?, cg.c64(4))?;
            let u = cg.load_vec(x, at, i32x32, 4)?;
            let h =
                cg.b.build_int_truncate(cg.bf16_round_bits(u, 32)?, i16x32, "")?;
            let d = cg.b.build_bit_cast(h, i32x16, "")?.into_vector_value();
            let to = cg.mul(cg.add(brow, cg.mul(c, cg.c64(16))?)?, cg.c64(4))?;
            cg.store_vec_aligned(xb, to, d, 4)
        })?;
        cg.for_range(cg.mul(nc, cg.c64(16))?, kp, |cg, t| {
            let e = cg.mul(t, cg.c64(2))?;
            let lo = cg.load_f32(x, cg.add(xrow, e)?)?;
            let o = cg.add(e, cg.c64(1))?;
            let inside = cg.icmp(IntPredicate::SLT, o, k)?;
            let oi = cg.select_i(inside, o, e)?;
            let hi = cg.load_f32(x, cg.add(xrow, oi)?)?;
            let hi = cg.select_f(inside, hi, cg.cf32(0.0))?;
            let v = cg.b.build_insert_element(
                cg.f32t().vec_type(2).get_undef(),
                lo,
                cg.i32t().const_zero(),
                "",
            )?;
            let v =
                cg.b.build_insert_element(v, hi, cg.i32t().const_int(1, false), "")?;
            let u =
                cg.b.build_bit_cast(v, cg.i32t().vec_type(2), "")?
                    .into_vector_value();
            let h = cg.b.build_int_truncate(
                cg.bf16_round_bits(u, 2)?,
                cg.cx.i16_type().vec_type(2),
                "",
            )?;
            let d = cg.b.build_bit_cast(h, cg.i32t(), "")?;
            cg.store(DType::I32, xb, cg.add(brow, t)?, d)
        })
    })
}

/// `y[r, off + j] = Σ_t x[r, t] · W[t, j] (+ bias[off + j])` in f32, W
/// `[k, n]`, or `[n, k]` when `tr`; parallel over the columns. With a bf16
/// `madd` the elements of x and W are pairs along K (`tr` is not taken).
#[allow(clippy::too_many_arguments)]
fn gemm_f32<'c>(
    cg: &mut Cg<'c>,
    xptr: PointerValue<'c>,
    wptr: PointerValue<'c>,
    y: PointerValue<'c>,
    shape: GemmShape<'c>,
    tr: bool,
    madd: Madd,
    bias: Option<PointerValue<'c>>,
) -> R<()> {
    if tr && madd != Madd::F32 {
        return cg.err("bf16 weights are never transposed");
    }
    let GemmShape {
        rows,
        k,
        n: nn,
        ldy: ntot,
        off,
    } = shape;
    let mut caps: Vec<BasicValueEnum> = vec![
        xptr.into(),
        wptr.into(),
        y.into(),
        rows.into(),
        k.into(),
        nn.into(),
        ntot.into(),
        off.into(),
    ];
    if let Some(b) = bias {
        caps.push(b.into());
    }
    let has_bias = bias.is_some();
    // Threads split whole 64-column panels (a split inside one would send
    // its columns down the scalar tail).
    let npan = cg.sdiv(cg.add(nn, cg.c64(63))?, cg.c64(64))?;
    // Per panel: rows · k · 64 multiply-adds at 32 per cycle.
    let cost = cg.mul(cg.mul(rows, k)?, cg.c64(2))?;
    cg.parallel_for(npan, cost, &caps, |cg, c, plo, phi| {
        let p = |i: usize| c[i].into_pointer_value();
        let i = |j: usize| c[j].into_int_value();
        let (xp, wp, yp) = (p(0), p(1), p(2));
        let (rows, k, nn, ntot, off) = (i(3), i(4), i(5), i(6), i(7));
        let lo = cg.mul(plo, cg.c64(64))?;
        let hi = cg.smin(cg.mul(phi, cg.c64(64))?, nn)?;
        let acc = cg.b.build_alloca(cg.f32t(), "acc")?;
        let vaccs: Vec<PointerValue> = (0..4)
            .map(|_| cg.b.build_alloca(cg.f32t().vec_type(16), "vacc"))
            .collect::<Result<_, _>>()?;
        let f32x16 = cg.f32t().vec_type(16);
        // W as [K, N]: panels of 64 columns × tiles of 4 rows, 16
        // accumulators in registers over all of K (each W vector loaded
        // once per tile, x broadcast): the panel's slice of W is read
        // once per 4 rows, not once per row.
        let panels = cg.sdiv(cg.sub(hi, lo)?, cg.c64(64))?;
        let quads = if tr {
            cg.c64(0)
        } else {
            cg.sdiv(rows, cg.c64(4))?
        };
        let taccs: Vec<PointerValue> = if tr {
            Vec::new()
        } else {
            (0..16)
                .map(|_| cg.b.build_alloca(f32x16, "tacc"))
                .collect::<Result<_, _>>()?
        };
        // The task's last panel may be partial (`tailw` columns, 1 to 63):
        // it runs the same code with masked lanes.
        let tailw = cg.sub(cg.sub(hi, lo)?, cg.mul(panels, cg.c64(64))?)?;
        let has_tail = cg.icmp(IntPredicate::SGT, tailw, cg.c64(0))?;
        let tailw32 = cg.b.build_int_truncate(tailw, cg.i32t(), "")?;
        let masks: Vec<VectorValue> = (0..4u64)
            .map(|u| {
                let iota: Vec<_> = (0..16)
                    .map(|l| cg.i32t().const_int(16 * u + l, false))
                    .collect();
                Ok(cg.b.build_int_compare(
                    IntPredicate::SLT,
                    VectorType::const_vector(&iota),
                    cg.splat_i32(tailw32, 16)?,
                    "",
                )?)
            })
            .collect::<R<_>>()?;
        let mask_of = |partial: bool, u: usize| partial.then(|| masks[u]);
        if !tr {
            // K in slices of F32_K_BLOCK: a panel's slice of W (32 KB)
            // stays in L1 while every 4-row tile passes, where all of K
            // (1.3 MB at K = 5120) streamed from L2 or L3 once per tile.
            // The tiles' sums wait in y between slices (the same f32 sums
            // in the same order).
            let nkb = cg.sdiv(cg.add(k, cg.c64(F32_K_BLOCK - 1))?, cg.c64(F32_K_BLOCK))?;
            // `nv` vectors of 16 columns per row (4 but in a partial panel).
            let tile_panel = |cg: &mut Cg<'c>,
                              j: IntValue<'c>,
                              partial: bool,
                              nv: usize|
             -> R<()> {
                cg.for_n(nkb, |cg, kb| {
                    let t0 = cg.mul(kb, cg.c64(F32_K_BLOCK))?;
                    let kn = cg.smin(cg.c64(F32_K_BLOCK), cg.sub(k, t0)?)?;
                    let first = cg.icmp(IntPredicate::EQ, kb, cg.c64(0))?;
                    cg.for_n(quads, |cg, q| {
                        let r0 = cg.mul(q, cg.c64(4))?;
                        for rr in 0..4 {
                            let yrow = cg.add(cg.mul(cg.add(r0, cg.c64(rr))?, ntot)?, off)?;
                            for u in 0..nv {
                                let o = cg.add(cg.add(yrow, j)?, cg.c64(16 * u as i64))?;
                                let v =
                                    cg.load_f32x16(yp, cg.mul(o, cg.c64(4))?, mask_of(partial, u))?;
                                let v =
                                    cg.b.build_select(first, f32x16.const_zero(), v, "")?
                                        .into_vector_value();
                                cg.b.build_store(taccs[rr as usize * 4 + u], v)?;
                            }
                        }
                        cg.for_n(kn, |cg, t| {
                            let t = cg.add(t0, t)?;
                            let wrow = cg.add(cg.mul(t, nn)?, j)?;
                            let wv: Vec<Vec<VectorValue>> = (0..nv as i64)
                                .map(|u| {
                                    let o = cg.mul(cg.add(wrow, cg.c64(16 * u))?, cg.c64(4))?;
                                    madd.prep(
                                        cg,
                                        cg.load_f32x16(wp, o, mask_of(partial, u as usize))?,
                                    )
                                })
                                .collect::<R<_>>()?;
                            for rr in 0..4 {
                                let xi = cg.add(cg.mul(cg.add(r0, cg.c64(rr))?, k)?, t)?;
                                let a = madd.prep(cg, cg.splat_f32(cg.load_f32(xp, xi)?, 16)?)?;
                                for (u, w) in wv.iter().enumerate() {
                                    let acc = taccs[rr as usize * 4 + u];
                                    let s = cg.b.build_load(f32x16, acc, "")?.into_vector_value();
                                    cg.b.build_store(acc, madd.apply(cg, &a, w, s)?)?;
                                }
                            }
                            Ok(())
                        })?;
                        for rr in 0..4 {
                            let yrow = cg.add(cg.mul(cg.add(r0, cg.c64(rr))?, ntot)?, off)?;
                            for u in 0..nv {
                                let acc = taccs[rr as usize * 4 + u];
                                let v = cg.b.build_load(f32x16, acc, "")?.into_vector_value();
                                let o = cg.add(cg.add(yrow, j)?, cg.c64(16 * u as i64))?;
                                cg.store_f32x16(yp, cg.mul(o, cg.c64(4))?, v, mask_of(partial, u))?;
                            }
                        }
                        Ok(())
                    })
                })
            };
            cg.for_n(panels, |cg, pn| {
                let j = cg.add(lo, cg.mul(pn, cg.c64(64))?)?;
                tile_panel(cg, j, false, 4)
            })?;
            let j = cg.add(lo, cg.mul(panels, cg.c64(64))?)?;
            // A partial panel multiplies only its vectors that hold columns
            // (a 32-column GEMM, a patch embedding's, did twice its work).
            let nvt = cg.sdiv(cg.add(tailw, cg.c64(15))?, cg.c64(16))?;
            for nv in 1..=4 {
                let is = cg.and(has_tail, cg.icmp(IntPredicate::EQ, nvt, cg.c64(nv as i64))?)?;
                cg.if_then(is, |cg| tile_panel(cg, j, true, nv))?;
            }
        }
        cg.for_n(rows, |cg, r| {
            let xrow = cg.mul(r, k)?;
            let yrow = cg.add(cg.mul(r, ntot)?, off)?;
            if tr {
                // Dot products along K: 16 lanes at a time, then the rest.
                let f32x16 = cg.f32t().vec_type(16);
                let kv = cg.sdiv(k, cg.c64(16))?;
                cg.for_range(lo, hi, |cg, j| {
                    let wrow = cg.mul(j, k)?;
                    cg.b.build_store(vaccs[0], f32x16.const_zero())?;
                    cg.for_n(kv, |cg, t| {
                        let o = cg.mul(t, cg.c64(16))?;
                        let a = cg.load_vec_f32(xp, cg.mul(cg.add(xrow, o)?, cg.c64(4))?, 16)?;
                        let w = cg.load_vec_f32(wp, cg.mul(cg.add(wrow, o)?, cg.c64(4))?, 16)?;
                        let s = cg.b.build_load(f32x16, vaccs[0], "")?.into_vector_value();
                        let f = cg.intrinsic(
                            "llvm.fma",
                            &[f32x16.into()],
                            &[a.into(), w.into(), s.into()],
                        )?;
                        cg.b.build_store(vaccs[0], f)?;
                        Ok(())
                    })?;
                    let v = cg.b.build_load(f32x16, vaccs[0], "")?;
                    // A tree over the lanes (an in-order reduction is a
                    // chain of 16 dependent adds per output).
                    let red = cg
                        .intrinsic(
                            "llvm.vector.reduce.fadd",
                            &[f32x16.into()],
                            &[cg.cf32(0.0).into(), v.into()],
                        )?
                        .into_float_value();
                    if let Some(i) = red.as_instruction() {
                        let _ = i.set_fast_math_flags(inkwell::values::FastMathFlags::AllowReassoc);
                    }
                    cg.b.build_store(acc, red)?;
                    cg.for_range(cg.mul(kv, cg.c64(16))?, k, |cg, t| {
                        let a = cg.load_f32(xp, cg.add(xrow, t)?)?;
                        let b = cg.load_f32(wp, cg.add(wrow, t)?)?;
                        let s = cg.b.build_load(cg.f32t(), acc, "")?.into_float_value();
                        cg.b.build_store(acc, cg.fadd(s, cg.fmul(a, b)?)?)?;
                        Ok(())
                    })?;
                    let s = cg.b.build_load(cg.f32t(), acc, "")?.into_float_value();
                    cg.store(DType::F32, yp, cg.add(yrow, j)?, s.into())
                })?;
            } else {
                // Rows the tiles did not take: panels of 64 columns, four
                // <16 x f32> accumulators kept in registers over all of K
                // (x[r, t] broadcast, one row of W per step), stored once;
                // the partial panel with masked lanes.
                let single = cg.icmp(IntPredicate::SGE, r, cg.mul(quads, cg.c64(4))?)?;
                let row_panel = |cg: &mut Cg<'c>, j: IntValue<'c>, partial: bool| -> R<()> {
                    for a in &vaccs {
                        cg.b.build_store(*a, f32x16.const_zero())?;
                    }
                    cg.for_n(k, |cg, t| {
                        let a = cg.splat_f32(cg.load_f32(xp, cg.add(xrow, t)?)?, 16)?;
                        let a = madd.prep(cg, a)?;
                        let wrow = cg.add(cg.mul(t, nn)?, j)?;
                        for (u, acc) in vaccs.iter().enumerate() {
                            let o = cg.mul(cg.add(wrow, cg.c64(16 * u as i64))?, cg.c64(4))?;
                            let w = madd.prep(cg, cg.load_f32x16(wp, o, mask_of(partial, u))?)?;
                            let s = cg.b.build_load(f32x16, *acc, "")?.into_vector_value();
                            cg.b.build_store(*acc, madd.apply(cg, &a, &w, s)?)?;
                        }
                        Ok(())
                    })?;
                    for (u, acc) in vaccs.iter().enumerate() {
                        let v = cg.b.build_load(f32x16, *acc, "")?.into_vector_value();
                        let o = cg.add(cg.add(yrow, j)?, cg.c64(16 * u as i64))?;
                        cg.store_f32x16(yp, cg.mul(o, cg.c64(4))?, v, mask_of(partial, u))?;
                    }
                    Ok(())
                };
                let np = cg.select_i(single, panels, cg.c64(0))?;
                cg.for_n(np, |cg, pn| {
                    let j = cg.add(lo, cg.mul(pn, cg.c64(64))?)?;
                    row_panel(cg, j, false)
                })?;
                let j = cg.add(lo, cg.mul(panels, cg.c64(64))?)?;
                cg.if_then(cg.and(single, has_tail)?, |cg| row_panel(cg, j, true))?;
            }
            if has_bias {
                let bp = p(8);
                cg.for_range(lo, hi, |cg, j| {
                    let yi = cg.add(yrow, j)?;
                    let o = cg.load_f32(yp, yi)?;
                    let b = cg.load_f32(bp, cg.add(off, j)?)?;
                    cg.store(DType::F32, yp, yi, cg.fadd(o, b)?.into())
                })?;
            }
            Ok(())
        })
    })
}

/// Bytes of activation codes and scales a `qgemm` row block may take: half
/// of a 2 MB L2, so the block stays cached while every column passes by.
const ROW_BLOCK_BYTES: i64 = 1 << 20;

fn qgemm<'c>(cg: &mut Cg<'c>, n: &Node, ins: &[Option<Val<'c>>]) -> R<Val<'c>> {
    let x = arg(cg, ins, 0)?.clone();
    if x.dt != DType::F32 || x.rank() == 0 {
        return cg.err("x must be an f32 tensor of rank >= 1");
    }
    let Some(kk) = n.int("k") else {
        return cg.err("`k` attribute is required");
    };
    let k = cg.c64(kk);
    let ok = cg.icmp(IntPredicate::EQ, *x.dims.last().expect("rank"), k)?;
    cg.check(ok, "x does not have k features")?;
    let parts = n.int("parts").unwrap_or(1).max(1) as usize;
    let Some(wf) = format_attr(cg, n, "wformat", "wmode")? else {
        return cg.err("weights must be quantized");
    };
    let af = format_attr(cg, n, "aformat", "amode")?;
    if let Some(af) = af.filter(|af| af.name() != wf.name()) {
        return cg.err(format!(
            "activations in {} with weights in {} have no block dot product",
            af.name(),
            wf.name()
        ));
    }
    let rot = n.int("rotate").unwrap_or(0);
    if rot > 0 && kk % rot != 0 {
        return cg.err(format!(
            "{kk} features are not a multiple of the rotation block {rot}"
        ));
    }
    let ascaled = af.is_some() && n.string("ascale") == Some("pow2");
    let wscaled = n.int("wscale").unwrap_or(0) != 0;
    let rows = cg.product(&x.dims[..x.rank() - 1])?;
    let bl = wf.block_len() as i64;
    let nb_i = (kk + bl - 1) / bl;
    let bpr = nb_i * wf.block_bytes() as i64;
    // Prologue: every activation row rotated and quantized once (packed
    // rows), or only rotated (f32 rows) for weight-only quantization.
    let abpr = if af.is_some() { bpr } else { 4 * kk };
    let (fc, mc) = af.map_or((-1, 0), lpc_rt::format_codes);
    // 4-bit formats: both operands as i8 block codes and per-block scales;
    // activations decoded here, once per row.
    let blocks = af.is_some() && bl > 1;
    let kpad = nb_i * bl;
    // With VNNI: activation codes offset to unsigned (u8 = code + off), rows
    // padded to 64-byte chunks (zero weights there), scales as f32 replicated
    // over the block's i32 lanes (block/4 of them); else i8 codes and one
    // f64 scale per block.
    let vnni = blocks && cg.vnni512;
    let aoff: u8 = if matches!(wf, Format::Mxfp4(_)) {
        12
    } else {
        28
    };
    // MXFP4 W4A4 panels pair blocks (see `panel_gemm`): codes shifted by up
    // to `PAIR_MAX_SHIFT` reach 12 << 3 = 96, the panel weights' offset.
    let pairs = vnni && matches!(wf, Format::Mxfp4(_)) && matches!(af, Some(Format::Mxfp4(_)));
    let poff: u8 = if pairs { 12 << PAIR_MAX_SHIFT } else { aoff };
    let npairs = if pairs { nb_i / 2 } else { 0 };
    let kc = if vnni { (kpad + 63) / 64 * 64 } else { kpad };
    let lanes = kc / 4;
    // 4-bit weights in the CPU layout (strips): fewer than strip_max_rows
    // rows run the strip kernel, which reads the panel GEMM's activation
    // arrays; when every part is in strips, the row path's are never read.
    let in_strips = |p: usize| {
        vnni && n
            .inputs
            .get(1 + p)
            .copied()
            .flatten()
            .is_some_and(|v| cg.cpu_layout.contains(&v))
    };
    let any_strip = (0..parts).any(in_strips);
    let all_strip = (0..parts).all(in_strips);
    // HiF8 (W8A8): both operands decoded once to exact f32 values (rows
    // padded to 16 lanes), multiplied and summed lane-wise in f32.
    let hif8 = af.is_some() && bl == 1;
    // Padded to 64 lanes: four independent 16-lane accumulators.
    let k16 = (kk + 63) / 64 * 64;
    // HiF8 (W8A8): a panel GEMM over the exact decodes when the panel fits
    // the stack comfortably; in bf16 pairs with AVX-512 BF16, else in f32.
    let f32_panels = hif8 && k16 * NR_F32 * 4 <= F32_PANEL_MAX_BYTES;
    let bf16_panels = f32_panels && cg.bf16_512;
    // ... and fewer rows against CPU-layout weights (`cpu_row_dot_hif8`)
    // take bf16 activations in its decode's order.
    let bf16_rows = hif8
        && cg.bf16_512
        && (0..parts).any(|p| {
            n.inputs
                .get(1 + p)
                .copied()
                .flatten()
                .is_some_and(|v| cg.cpu_layout.contains(&v))
        });
    // VNNI without row scales: the runtime writes the activation codes and
    // block factors directly (`lpc_rt_quantize_codes`); no packed rows.
    let direct = vnni && !ascaled;
    // The scratch buffers, one allocation (absent ones: null):
    // - pa: packed (or, weight-only, rotated f32) rows; ea: row exponents;
    // - adec (HiF8): exact activation decodes; abf: the same in bf16 (the
    //   bf16 panel GEMM); abr: in bf16, permuted per 64 for the row kernel;
    // - acodes, ascales (4-bit): codes (u8 offset with VNNI) and scales
    //   (VNNI: f32 per i32 lane, else f64 per block);
    // - as8, asb, acs (panel GEMM, VNNI): s8 codes (the broadcast operand),
    //   f32 block scales, per block the correction `-off · Σ a`;
    // - apf: per row and block pair, do the two share a scale;
    // - afac: the runtime's f64 block factors (`direct`);
    // - tpf: per full row tile and pair, do all its rows pair it.
    let r1 = cg.smax(rows, cg.c64(1))?;
    let per_row = |cg: &Cg<'c>, n: i64| cg.mul(r1, cg.c64(n));
    let tiles = cg.sdiv(rows, cg.c64(MR))?;
    let mut sizes = vec![
        (
            DType::U8,
            if direct {
                cg.c64(1)
            } else {
                per_row(cg, abpr)?
            },
        ),
        (DType::I32, r1),
    ];
    let ask = |on: bool, sizes: &mut Vec<(DType, IntValue<'c>)>, dt: DType, n: IntValue<'c>| {
        sizes.push((dt, if on { n } else { cg.c64(0) }));
        sizes.len() - 1
    };
    // With VNNI the panel GEMM (from PANEL_MIN_ROWS rows) and the row path
    // read different arrays: only the running path's get room.
    let big = cg.icmp(IntPredicate::SGE, rows, cg.c64(PANEL_MIN_ROWS))?;
    let row_only = |cg: &Cg<'c>, n: IntValue<'c>| -> R<IntValue<'c>> {
        if all_strip {
            Ok(cg.c64(0))
        } else if vnni {
            cg.select_i(big, cg.c64(0), n)
        } else {
            Ok(n)
        }
    };
    // The prologue builds the panel GEMM's activation arrays for the strip
    // kernel too (the pair flags included, though only panels read them).
    let panel_acts = |cg: &Cg<'c>, n: IntValue<'c>| -> R<IntValue<'c>> {
        if any_strip {
            Ok(n)
        } else {
            cg.select_i(big, n, cg.c64(0))
        }
    };
    let panel_only = |cg: &Cg<'c>, n: IntValue<'c>| cg.select_i(big, n, cg.c64(0));
    let i_adec = ask(hif8, &mut sizes, DType::F32, per_row(cg, k16)?);
    let i_abf = ask(bf16_panels, &mut sizes, DType::Bf16, per_row(cg, k16)?);
    // Whether HiF8 rows take the row path (else the panel GEMM).
    // (Only CPU-layout rows in bf16 pairs read `abr`.) The weights' bytes,
    // where known when compiling.
    let wbytes: Option<u64> = (0..parts)
        .map(|p| {
            let w = ins.get(1 + p)?.as_ref()?;
            let d0 = w.dims.first()?.get_zero_extended_constant()?;
            let d1 = w.dims.get(1)?.get_zero_extended_constant()?;
            Some(d0 * d1)
        })
        .sum();
    let hif8_many_rows = wbytes.is_some_and(|b| b >= HIF8_ROWS_MIN_BYTES);
    let hif8_min = |cpu: bool| {
        if cpu && bf16_rows && hif8_many_rows {
            HIF8_CPU_PANEL_MIN_ROWS
        } else {
            F32_PANEL_MIN_ROWS
        }
    };
    let few = if f32_panels {
        cg.icmp(IntPredicate::SLT, rows, cg.c64(hif8_min(true)))?
    } else {
        cg.cx.bool_type().const_int(1, false)
    };
    let n_abr = cg.select_i(few, per_row(cg, k16)?, cg.c64(0))?;
    let i_abr = ask(bf16_rows, &mut sizes, DType::Bf16, n_abr);
    let i_acodes = ask(
        blocks,
        &mut sizes,
        DType::U8,
        row_only(cg, per_row(cg, kc)?)?,
    );
    let i_ascales = if vnni {
        ask(
            blocks,
            &mut sizes,
            DType::F32,
            row_only(cg, per_row(cg, lanes)?)?,
        )
    } else {
        ask(blocks, &mut sizes, DType::F64, per_row(cg, nb_i)?)
    };
    let i_as8 = ask(vnni, &mut sizes, DType::I8, per_row(cg, kc)?);
    let i_asb = ask(
        vnni,
        &mut sizes,
        DType::F32,
        panel_acts(cg, per_row(cg, nb_i)?)?,
    );
    let i_acs = ask(
        vnni,
        &mut sizes,
        DType::I32,
        panel_acts(cg, per_row(cg, nb_i)?)?,
    );
    let i_apf = ask(
        pairs,
        &mut sizes,
        DType::U8,
        panel_acts(cg, per_row(cg, npairs.max(1))?)?,
    );
    let i_afac = ask(direct, &mut sizes, DType::F64, per_row(cg, nb_i)?);
    let i_tpf = ask(
        pairs,
        &mut sizes,
        DType::U8,
        panel_only(cg, cg.mul(cg.smax(tiles, cg.c64(1))?, cg.c64(npairs + 1))?)?,
    );
    let (scratch, bufs) = cg.alloc_scratch(&sizes)?;
    let null = cg.ptrt().const_null();
    let pick = |i: usize, on: bool| if on { bufs[i] } else { null };
    let (pa, ea) = (bufs[0], bufs[1]);
    let adec = pick(i_adec, hif8);
    let abf = pick(i_abf, bf16_panels);
    let abr = pick(i_abr, bf16_rows);
    let (acodes, ascales) = (pick(i_acodes, blocks), pick(i_ascales, blocks));
    let (as8, asb, acs) = (pick(i_as8, vnni), pick(i_asb, vnni), pick(i_acs, vnni));
    let apf = pick(i_apf, pairs);
    let afac = pick(i_afac, direct);
    let tpf_buf = pick(i_tpf, pairs);
    // Rows shift their codes for pairs only when the panel GEMM pairs.
    let pair_rows = cg.icmp(IntPredicate::SGE, rows, cg.c64(PAIR_MIN_ROWS))?;
    let pair_rows = cg.b.build_int_z_extend(pair_rows, cg.i64t(), "")?;
    // ... and the prologue builds only the running path's form.
    let panel_rows = cg.b.build_int_z_extend(big, cg.i64t(), "")?;
    let caps: Vec<BasicValueEnum> = vec![
        x.ptr.into(),
        pa.into(),
        ea.into(),
        acodes.into(),
        ascales.into(),
        adec.into(),
        as8.into(),
        asb.into(),
        acs.into(),
        apf.into(),
        pair_rows.into(),
        afac.into(),
        panel_rows.into(),
        abf.into(),
        abr.into(),
        cg.b.build_int_z_extend(few, cg.i64t(), "")?.into(),
    ];
    // Per row: about 2 cycles per element (quantization, rotation and the
    // path's activation arrays).
    cg.parallel_for(rows, cg.c64(2 * kk), &caps, |cg, c, lo, hi| {
        let p = |i: usize| c[i].into_pointer_value();
        let (xp, pap, eap, acp, asp) = (p(0), p(1), p(2), p(3), p(4));
        let i32c = |v: i32| cg.i32t().const_int(v as u64, true);
        let cnt = cg.sub(hi, lo)?;
        let xs = cg.gep(DType::F32, xp, cg.mul(lo, cg.c64(kk))?)?;
        let ps = cg.gep_bytes(pap, cg.mul(lo, cg.c64(abpr))?)?;
        let es = cg.gep(DType::I32, eap, lo)?;
        let mut args: Vec<BasicMetadataValueEnum> = vec![
            i32c(fc).into(),
            i32c(mc).into(),
            xs.into(),
            cnt.into(),
            cg.c64(kk).into(),
            cg.c64(rot).into(),
        ];
        if direct {
            args.extend::<[BasicMetadataValueEnum; 3]>([
                cg.gep_bytes(p(6), cg.mul(lo, cg.c64(kc))?)?.into(),
                cg.c64(kc).into(),
                cg.gep(DType::F64, p(11), cg.mul(lo, cg.c64(nb_i))?)?.into(),
            ]);
            // Sizes consistent by construction: the status is always 0.
            cg.call_value(cg.rt("lpc_rt_quantize_codes"), &args)?;
        } else {
            args.extend::<[BasicMetadataValueEnum; 3]>([
                i32c(ascaled as i32).into(),
                ps.into(),
                es.into(),
            ]);
            cg.call_void(cg.rt("lpc_rt_quantize_rows"), &args)?;
        }
        if let (true, Some(af), false) = (blocks, af, vnni) {
            cg.for_range(lo, hi, |cg, r| {
                let prow = cg.gep_bytes(pap, cg.mul(r, cg.c64(bpr))?)?;
                let crow = cg.gep_bytes(acp, cg.mul(r, cg.c64(kpad))?)?;
                let srow = cg.gep(DType::F64, asp, cg.mul(r, cg.c64(nb_i))?)?;
                cg.for_n(cg.c64(nb_i), |cg, t| {
                    cg.decode_block(af, prow, t, crow, srow)
                })
            })?;
        }
        if hif8 {
            let adp = p(5);
            cg.for_range(lo, hi, |cg, r| {
                let prow = cg.gep_bytes(pap, cg.mul(r, cg.c64(bpr))?)?;
                let drow = cg.gep(DType::F32, adp, cg.mul(r, cg.c64(k16))?)?;
                cg.hif8_decode_row(prow, WLayout::Spec, kk, k16, drow)?;
                if bf16_panels {
                    // The top halves of the exact f32 values.
                    let brow = cg.gep(DType::Bf16, p(13), cg.mul(r, cg.c64(k16))?)?;
                    let i32x16 = cg.i32t().vec_type(16);
                    let i16x16 = cg.cx.i16_type().vec_type(16);
                    cg.for_n(cg.c64(k16 / 16), |cg, i| {
                        let v = cg.load_vec(drow, cg.mul(i, cg.c64(64))?, i32x16, 4)?;
                        let hi =
                            cg.b.build_right_shift(v, cg.splat_i32c(16, 16), false, "")?;
                        let h = cg.b.build_int_truncate(hi, i16x16, "")?;
                        cg.store_vec_aligned(brow, cg.mul(i, cg.c64(32))?, h, 2)
                    })?;
                }
                if bf16_rows {
                    // Only the row path reads them.
                    let few = cg.icmp(IntPredicate::NE, c[15].into_int_value(), cg.c64(0))?;
                    cg.if_then(few, |cg| hif8_row_bf16(cg, drow, k16, p(14), r))?;
                }
                Ok(())
            })?;
        }
        if let (true, Some(af)) = (vnni, af) {
            let s64 =
                cg.b.build_array_alloca(cg.f64t(), cg.i32t().const_int(nb_i as u64, false), "s64")?;
            let panel = cg.icmp(IntPredicate::NE, c[12].into_int_value(), cg.c64(0))?;
            cg.for_range(lo, hi, |cg, r| {
                let prow = cg.gep_bytes(pap, cg.mul(r, cg.c64(bpr))?)?;
                let crow = cg.gep_bytes(acp, cg.mul(r, cg.c64(kc))?)?;
                let srow = cg.gep(DType::F32, asp, cg.mul(r, cg.c64(lanes))?)?;
                // The s8 codes: from the runtime (`direct`) or decoded here.
                let (s8p, sbp, csp) = (p(6), p(7), p(8));
                let s8row = cg.gep_bytes(s8p, cg.mul(r, cg.c64(kc))?)?;
                let s64 = if direct {
                    cg.gep(DType::F64, p(11), cg.mul(r, cg.c64(nb_i))?)?
                } else {
                    cg.b.build_memset(s8row, 1, cg.i8t().const_zero(), cg.c64(kc))?;
                    cg.for_n(cg.c64(nb_i), |cg, t| {
                        cg.decode_block(af, prow, t, s8row, s64)
                    })?;
                    s64
                };
                let panel_data = |cg: &mut Cg<'c>| -> R<()> {
                    // The panel GEMM (and the strip kernel): the s8
                    // codes, f32 block scales and per-block sums times
                    // the weights' offset.
                    if pairs {
                        // From PAIR_MIN_ROWS rows: blocks 2q and 2q+1
                        // whose scales are at most 2^PAIR_MAX_SHIFT apart
                        // share the smaller one, the other's codes
                        // shifted left (exact, |code| <= 96); the pair's
                        // flag says so.
                        let pfrow = cg.gep_bytes(p(9), cg.mul(r, cg.c64(npairs))?)?;
                        let on = cg.icmp(IntPredicate::NE, c[10].into_int_value(), cg.c64(0))?;
                        // Below PAIR_MIN_ROWS no pair pairs: the codes and
                        // scales stay, the flags are 0.
                        let pair_all = |cg: &mut Cg<'c>| {
                            cg.for_n(cg.c64(npairs), |cg, q| {
                                let t0 = cg.mul(q, cg.c64(2))?;
                                let t1 = cg.add(t0, cg.c64(1))?;
                                let s0 = cg.load(DType::F64, s64, t0)?.into_float_value();
                                let s1 = cg.load(DType::F64, s64, t1)?.into_float_value();
                                let (ok, sh, eff) = cg.pair_shifts(s0, s1, on)?;
                                for (i, t) in [t0, t1].into_iter().enumerate() {
                                    let o = cg.mul(t, cg.c64(bl))?;
                                    let v = cg.load_i8xn(s8row, o, bl as u32)?;
                                    cg.store_vec(s8row, o, cg.shl_i8(v, sh[i])?)?;
                                    cg.store(DType::F64, s64, t, eff[i].into())?;
                                }
                                let flag = cg.b.build_int_z_extend(ok, cg.i8t(), "")?;
                                cg.store(DType::U8, pfrow, q, flag.into())
                            })
                        };
                        let none = |cg: &mut Cg<'c>| -> R<()> {
                            let z = cg.i8t().const_zero();
                            cg.b.build_memset(pfrow, 1, z, cg.c64(npairs))?;
                            Ok(())
                        };
                        cg.if_else(on, pair_all, none)?;
                    }
                    let sbrow = cg.gep(DType::F32, sbp, cg.mul(r, cg.c64(nb_i))?)?;
                    let csrow = cg.gep(DType::I32, csp, cg.mul(r, cg.c64(nb_i))?)?;
                    let i32v = cg.i32t().vec_type(bl as u32);
                    cg.for_n(cg.c64(nb_i), |cg, t| {
                        let sc = cg.load(DType::F64, s64, t)?.into_float_value();
                        cg.store(DType::F32, sbrow, t, cg.ftrunc(sc)?.into())?;
                        let v = cg.load_i8xn(s8row, cg.mul(t, cg.c64(bl))?, bl as u32)?;
                        let w = cg.b.build_int_s_extend(v, i32v, "")?;
                        let sum = cg
                            .intrinsic("llvm.vector.reduce.add", &[i32v.into()], &[w.into()])?
                            .into_int_value();
                        // Negated: the panel GEMM starts its accumulators
                        // there.
                        let m = cg.i32t().const_int((-(poff as i64)) as u64, true);
                        let corr = cg.b.build_int_mul(sum, m, "")?;
                        cg.store(DType::I32, csrow, t, corr.into())
                    })
                };
                let row_data = |cg: &mut Cg<'c>| -> R<()> {
                    // The row path: scales per i32 lane, the codes
                    // offset to unsigned (padding too: harmless, its
                    // weights are zero).
                    cg.replicate_scales(s64, nb_i, bl, lanes, srow)?;
                    cg.for_n(cg.c64(kc / 64), |cg, c| {
                        let o = cg.mul(c, cg.c64(64))?;
                        let v = cg.load_i8xn(s8row, o, 64)?;
                        let v = cg.b.build_int_add(v, cg.splat_i8(aoff, 64), "")?;
                        cg.store_vec(crow, o, v)
                    })
                };
                if any_strip {
                    panel_data(cg)?;
                } else {
                    cg.if_then(panel, panel_data)?;
                }
                if !all_strip {
                    let rows_path = cg.b.build_not(panel, "")?;
                    cg.if_then(rows_path, row_data)?;
                }
                Ok(())
            })?;
        }
        Ok(())
    })?;
    // Per full row tile of the panel GEMM (MR rows) and block pair: do all
    // its rows pair it? Column `npairs` holds the AND over every pair (the
    // tile then runs its pairs without checks).
    let tpf = if pairs {
        let tpf = tpf_buf;
        let all = cg.slot(cg.i8t().into(), cg.i8t().const_int(1, false).into())?;
        cg.for_n(tiles, |cg, ti| {
            let trow = cg.gep_bytes(tpf, cg.mul(ti, cg.c64(npairs + 1))?)?;
            cg.b.build_store(all, cg.i8t().const_int(1, false))?;
            cg.for_n(cg.c64(npairs), |cg, q| {
                let mut f = cg.i8t().const_int(1, false);
                for r in 0..MR {
                    let ri = cg.add(cg.mul(ti, cg.c64(MR))?, cg.c64(r))?;
                    let at = cg.add(cg.mul(ri, cg.c64(npairs))?, q)?;
                    f = cg.b.build_and(f, cg.load_u8(apf, at)?, "")?;
                }
                let a = cg.b.build_load(cg.i8t(), all, "")?.into_int_value();
                cg.b.build_store(all, cg.b.build_and(a, f, "")?)?;
                cg.store(DType::U8, trow, q, f.into())
            })?;
            let a = cg.b.build_load(cg.i8t(), all, "")?;
            cg.store(DType::U8, trow, cg.c64(npairs), a)
        })?;
        tpf
    } else {
        cg.ptrt().const_null()
    };
    let mut ws = Vec::new();
    let mut ntot = cg.c64(0);
    for p in 0..parts {
        let w = arg(cg, ins, 1 + p)?.clone();
        if w.rank() != 2 || w.dt != DType::U8 {
            return cg.err("packed weights must be 2-D u8");
        }
        let ok = cg.icmp(IntPredicate::EQ, w.dims[1], cg.c64(bpr))?;
        cg.check(ok, "packed weight rows do not match k and the format")?;
        let e = if wscaled {
            let e = arg(cg, ins, 1 + parts + p)?.clone();
            let ok = cg.icmp(IntPredicate::EQ, cg.product(&e.dims)?, w.dims[0])?;
            cg.check(ok, "weight exponents do not match the rows")?;
            Some(e)
        } else {
            None
        };
        let lay = match n.inputs.get(1 + p).copied().flatten() {
            Some(v) if (vnni || hif8) && cg.cpu_layout.contains(&v) => WLayout::Cpu { k: kk },
            _ => WLayout::Spec,
        };
        ws.push((w.clone(), e, w.dims[0], ntot, lay));
        ntot = cg.add(ntot, w.dims[0])?;
    }
    // Strips pace a single row over 4 MB of weights or more, and over a
    // part of 1 MB or more that one thread runs alone (see PACE_MIN_BYTES).
    let wbytes = ntot.get_zero_extended_constant().map(|n| n as i64 * bpr);
    let pace_on = cg.pace_strips && matches!(wf, Format::Mxfp4(_) | Format::Hif4(_));
    let paced = pace_on && wbytes.is_some_and(|b| b >= PACE_ALONE_MIN_BYTES);
    let paced_always = pace_on && wbytes.is_some_and(|b| b >= PACE_MIN_BYTES);
    let head = wbytes.is_some_and(|b| b >= STRIP_HEAD_MIN_BYTES);
    let after_w = 1 + parts + if wscaled { parts } else { 0 };
    let has_bias = n
        .int("bias")
        .map_or(ins.get(after_w).is_some_and(|v| v.is_some()), |b| b != 0);
    let bias = if has_bias {
        let b = arg(cg, ins, after_w)?.clone();
        let ok = cg.icmp(IntPredicate::EQ, cg.product(&b.dims)?, ntot)?;
        cg.check(ok, "bias length differs from the output features")?;
        Some(b)
    } else {
        None
    };
    let residual = if n.int("residual").unwrap_or(0) != 0 {
        let r = arg(cg, ins, after_w + has_bias as usize)?.clone();
        let ok = cg.icmp(IntPredicate::EQ, cg.product(&r.dims)?, cg.mul(rows, ntot)?)?;
        cg.check(ok, "residual does not match the output")?;
        Some(r)
    } else {
        None
    };
    let act = n.string("activation").map(str::to_string);
    let y = cg.alloc(DType::F32, cg.mul(rows, ntot)?)?;
    let null = cg.ptrt().const_null();
    for (w, e, nn, off, lay) in ws {
        let caps: Vec<BasicValueEnum> = vec![
            pa.into(),
            w.ptr.into(),
            y.into(),
            rows.into(),
            nn.into(),
            ntot.into(),
            off.into(),
            ea.into(),
            e.as_ref().map_or(null, |e| e.ptr).into(),
            bias.as_ref().map_or(null, |b| b.ptr).into(),
            residual.as_ref().map_or(null, |r| r.ptr).into(),
            acodes.into(),
            ascales.into(),
            adec.into(),
            abr.into(),
        ];
        let (has_e, has_b, has_r) = (e.is_some(), bias.is_some(), residual.is_some());
        let weight_only = af.is_none();
        let act = act.clone();
        // From a threshold of rows, the panel GEMM (HiF8: `hif8_min`; 4-bit
        // with VNNI: PANEL_MIN_ROWS, CPU-layout weights `strip_max_rows`);
        // below it the row path (4-bit CPU layout: the strip kernel).
        let panels = if f32_panels {
            let min_rows = hif8_min(matches!(lay, WLayout::Cpu { .. }));
            let big = cg.icmp(IntPredicate::SGE, rows, cg.c64(min_rows))?;
            let np = cg.sdiv(cg.add(nn, cg.c64(NR_F32 - 1))?, cg.c64(NR_F32))?;
            let pcaps: Vec<BasicValueEnum> = vec![
                w.ptr.into(),
                y.into(),
                rows.into(),
                nn.into(),
                ntot.into(),
                off.into(),
                bias.as_ref().map_or(null, |b| b.ptr).into(),
                residual.as_ref().map_or(null, |r| r.ptr).into(),
                if bf16_panels { abf } else { adec }.into(),
                ea.into(),
                e.as_ref().map_or(null, |e| e.ptr).into(),
            ];
            let spec = F32PanelSpec {
                k: kk,
                lay,
                k16,
                bpr,
                bf16: bf16_panels,
                ascaled,
                wscaled: has_e,
                has_b,
                has_r,
                act: act.clone(),
            };
            // Per panel: decoding it, then rows · k · NR_F32 f32
            // multiply-adds at 32 per cycle (bf16: 64).
            let per = if bf16_panels { 64 } else { 32 };
            let cost = cg.mul(cg.add(rows, cg.c64(4))?, cg.c64(k16 * NR_F32 / per))?;
            cg.parallel_for(
                cg.select_i(big, np, cg.c64(0))?,
                cost,
                &pcaps,
                |cg, c, lo, hi| f32_panel_gemm(cg, &spec, c, lo, hi),
            )?;
            big
        } else if vnni {
            let min_rows = if matches!(lay, WLayout::Cpu { .. }) {
                strip_max_rows(wf)
            } else {
                PANEL_MIN_ROWS
            };
            let big = cg.icmp(IntPredicate::SGE, rows, cg.c64(min_rows))?;
            let np = cg.sdiv(cg.add(nn, cg.c64(NR - 1))?, cg.c64(NR))?;
            let pcaps: Vec<BasicValueEnum> = vec![
                w.ptr.into(),
                y.into(),
                rows.into(),
                nn.into(),
                ntot.into(),
                off.into(),
                bias.as_ref().map_or(null, |b| b.ptr).into(),
                residual.as_ref().map_or(null, |r| r.ptr).into(),
                as8.into(),
                asb.into(),
                acs.into(),
                apf.into(),
                tpf.into(),
            ];
            let spec = PanelSpec {
                wf,
                nb: nb_i,
                bl,
                kc,
                bpr,
                lay,
                off: poff,
                pairs,
                paced,
                paced_always,
                head,
                has_b,
                has_r,
                act: act.clone(),
            };
            // Per panel: packing it (about 2 cycles per 64 codes), then
            // rows · k · NR 8-bit products at 128 per cycle.
            let cost = cg.mul(cg.add(cg.sdiv(rows, cg.c64(2))?, cg.c64(2))?, cg.c64(kpad))?;
            cg.parallel_for(
                cg.select_i(big, np, cg.c64(0))?,
                cost,
                &pcaps,
                |cg, c, lo, hi| panel_gemm(cg, &spec, c, lo, hi),
            )?;
            if let WLayout::Cpu { .. } = lay {
                // Fewer rows: the strip kernel, threads splitting the strips.
                // Per strip: 16 · bpr bytes read (from DRAM, a few bytes
                // per cycle) and rows · k · 16 products at 128 per cycle.
                let ns = cg.sdiv(nn, cg.c64(layout::STRIP as i64))?;
                let cost = cg.mul(cg.add(cg.sdiv(rows, cg.c64(8))?, cg.c64(2))?, cg.c64(kpad))?;
                let n = cg.select_i(big, cg.c64(0), ns)?;
                cg.parallel_for(n, cost, &pcaps, |cg, c, lo, hi| {
                    strip_gemm(cg, &spec, c, lo, hi)
                })?;
                continue;
            }
            big
        } else {
            cg.cx.bool_type().const_zero()
        };
        let n_rows_path = cg.select_i(panels, cg.c64(0), nn)?;
        // Per column: decoding its weights, then about a cycle per element
        // and row.
        let cost = cg.mul(cg.add(rows, cg.c64(1))?, cg.c64(kpad.max(k16)))?;
        cg.parallel_for(n_rows_path, cost, &caps, |cg, c, lo, hi| {
            let p = |i: usize| c[i].into_pointer_value();
            let i = |j: usize| c[j].into_int_value();
            let (ap, wp, yp) = (p(0), p(1), p(2));
            let (rows, ntot, off) = (i(3), i(5), i(6));
            let (eap, ewp, bp, rp) = (p(7), p(8), p(9), p(10));
            let (acp, asp) = (p(11), p(12));
            // HiF8 rows against CPU-layout weights in bf16 pairs.
            let abr = bf16_rows.then(|| p(14));
            let acc = cg.b.build_alloca(cg.f64t(), "acc")?;
            // The weight row being used, as block codes and scales.
            let wcodes = cg.b.build_array_alloca(
                cg.i8t(),
                cg.i32t().const_int(kpad.max(1) as u64, false),
                "wcodes",
            )?;
            let wsc = cg.b.build_array_alloca(
                cg.f64t(),
                cg.i32t().const_int(nb_i.max(1) as u64, false),
                "wscales",
            )?;
            // VNNI: the weight row's codes padded to whole chunks (zeros),
            // its scales replicated per lane, and per chunk the correction
            // `off · Σ w` of the unsigned activation offset.
            let f32x16 = cg.f32t().vec_type(16);
            let i32x16 = cg.i32t().vec_type(16);
            let mut haccs: Vec<PointerValue> = Vec::new();
            let (wdec, hacc) = if hif8 {
                let n = cg.i32t().const_int(k16 as u64, false);
                for _ in 0..4 {
                    haccs.push(cg.b.build_alloca(f32x16, "hacc4")?);
                }
                (
                    cg.b.build_array_alloca(cg.f32t(), n, "wdec")?,
                    cg.b.build_alloca(f32x16, "hacc")?,
                )
            } else {
                let null = cg.ptrt().const_null();
                (null, null)
            };
            let mut faccs: Vec<PointerValue> = Vec::new();
            let (wscx, wcorr, facc) = if vnni {
                let n32 = cg.i32t().const_int(lanes as u64, false);
                let wscx = cg.b.build_array_alloca(cg.f32t(), n32, "wscx")?;
                let wcorr = cg.b.build_array_alloca(cg.i32t(), n32, "wcorr")?;
                let facc = cg.b.build_alloca(f32x16, "facc")?;
                for _ in 0..4 {
                    faccs.push(cg.b.build_alloca(f32x16, "facc4")?);
                }
                let zero8 = cg.i8t().const_zero();
                cg.b.build_memset(wcodes, 16, zero8, cg.c64(kc))?;
                cg.b.build_memset(wscx, 16, zero8, cg.c64(4 * lanes))?;
                (wscx, wcorr, facc)
            } else {
                let null = cg.ptrt().const_null();
                (null, null, null)
            };
            // Rows in blocks whose activation codes and scales stay in L2
            // while all columns of the task pass by (a multiple of 4 rows,
            // 4 to 64: 64 for K = 5120, 16 for K = 25600).
            let row_bytes = if vnni {
                2 * kc
            } else {
                abpr + 8 * nb_i.max(1) + 4 * k16
            };
            let row_block = (ROW_BLOCK_BYTES / row_bytes.max(1)).clamp(4, 64) / 4 * 4;
            let nrb = cg.sdiv(cg.add(rows, cg.c64(row_block - 1))?, cg.c64(row_block))?;
            // ... and the epilogue: scales, bias, activation, residual.
            let finish = |cg: &mut Cg<'c>,
                          r: IntValue<'c>,
                          j: IntValue<'c>,
                          mut v: FloatValue<'c>|
             -> R<()> {
                if ascaled || has_e {
                    let mut e = cg.c64(0);
                    if ascaled {
                        let x = cg.load(DType::I32, eap, r)?.into_int_value();
                        e = cg.add(e, cg.sext64(x)?)?;
                    }
                    if has_e {
                        let x = cg.load(DType::I32, ewp, j)?.into_int_value();
                        e = cg.add(e, cg.sext64(x)?)?;
                    }
                    // 2^-e in two steps keeps each factor normal.
                    let neg = cg.sub(cg.c64(0), e)?;
                    let h = cg.sdiv(neg, cg.c64(2))?;
                    v = cg.fmul(cg.fmul(v, cg.pow2_f64(h)?)?, cg.pow2_f64(cg.sub(neg, h)?)?)?;
                }
                if has_b {
                    let b = cg.fext(cg.load_f32(bp, cg.add(off, j)?)?)?;
                    v = cg.fadd(v, b)?;
                }
                let mut y32 = cg.epilogue(cg.ftrunc(v)?, act.as_deref())?;
                let yi = cg.add(cg.add(cg.mul(r, ntot)?, off)?, j)?;
                if has_r {
                    y32 = cg.fadd(y32, cg.load_f32(rp, yi)?)?;
                }
                cg.store(DType::F32, yp, yi, y32.into())
            };
            // CPU-layout weights: single rows take two columns at a time
            // after the column loop (which only runs the four-row groups).
            let cpu = matches!(lay, WLayout::Cpu { .. });
            cg.for_n(nrb, |cg, rb| {
                let rlo = cg.mul(rb, cg.c64(row_block))?;
                let rhi = cg.smin(cg.add(rlo, cg.c64(row_block))?, rows)?;
                let rcount = cg.sub(rhi, rlo)?;
                cg.for_range(lo, hi, |cg, j| {
                    let wrow = cg.gep_bytes(wp, cg.mul(j, cg.c64(bpr))?)?;
                    // The whole weight row decoded once, for rows in fours (VNNI)
                    // or every row; single VNNI rows decode in registers instead.
                    let predecode = if vnni {
                        cg.icmp(IntPredicate::SGE, rcount, cg.c64(4))?
                    } else {
                        cg.cx.bool_type().const_int(1, false)
                    };
                    if blocks {
                        cg.if_then(predecode, |cg| {
                            cg.for_n(cg.c64(nb_i), |cg, t| {
                                cg.decode_block(wf, wrow, t, wcodes, wsc)
                            })
                        })?;
                    }
                    if hif8 && !cpu {
                        cg.hif8_decode_row(wrow, lay, kk, k16, wdec)?;
                    }
                    if vnni {
                        cg.if_then(predecode, |cg| {
                            cg.replicate_scales(wsc, nb_i, bl, lanes, wscx)?;
                            cg.for_n(cg.c64(kc / 64), |cg, c| {
                                let o = cg.mul(c, cg.c64(64))?;
                                let vw = cg.load_i8xn(wcodes, o, 64)?;
                                let corr =
                                    cg.vpdpbusd(i32x16.const_zero(), cg.splat_i8(aoff, 64), vw)?;
                                cg.store_vec_aligned(wcorr, o, corr, 4)
                            })
                        })?;
                    }
                    // One output row at a time: its f64 dot product...
                    let single = |cg: &mut Cg<'c>, r: IntValue<'c>| -> R<FloatValue<'c>> {
                        let arow = cg.gep_bytes(ap, cg.mul(r, cg.c64(abpr))?)?;
                        let v = if weight_only {
                            cg.mixed_dot(wf, arow, wrow, kk, acc)?
                        } else if vnni {
                            // Weights decoded in registers chunk by chunk (64
                            // codes: two MXFP4 blocks or one HiF4 unit):
                            // vpdpbusd, minus the offset correction, to f32,
                            // times the per-lane scale products, summed
                            // lane-wise; one reduction per output.
                            cg.b.build_store(facc, f32x16.const_zero())?;
                            let crow = cg.mul(r, cg.c64(kc))?;
                            let srow = cg.mul(r, cg.c64(4 * lanes))?;
                            let per = 64 / bl;
                            let full = nb_i / per;
                            let chunk = |cg: &mut Cg<'c>,
                                         c: IntValue<'c>,
                                         last_half: bool|
                             -> R<()> {
                                let t0 = cg.mul(c, cg.c64(per))?;
                                let (codes, swv) = if per == 2 {
                                    let (c0, s0) = cg.decode_codes(wf, wrow, t0, None)?;
                                    let (c1, s1) = if last_half {
                                        (cg.i8t().vec_type(32).const_zero(), cg.cf64(0.0))
                                    } else {
                                        cg.decode_codes(wf, wrow, cg.add(t0, cg.c64(1))?, None)?
                                    };
                                    let m: Vec<_> =
                                        (0..64u64).map(|i| cg.i32t().const_int(i, false)).collect();
                                    let codes = cg.b.build_shuffle_vector(
                                        c0,
                                        c1,
                                        VectorType::const_vector(&m),
                                        "",
                                    )?;
                                    let (a, b) = (
                                        cg.splat_f32(cg.ftrunc(s0)?, 16)?,
                                        cg.splat_f32(cg.ftrunc(s1)?, 16)?,
                                    );
                                    let m: Vec<_> = (0..16u64)
                                        .map(|i| {
                                            cg.i32t()
                                                .const_int(if i < 8 { i } else { 16 + i }, false)
                                        })
                                        .collect();
                                    (
                                        codes,
                                        cg.b.build_shuffle_vector(
                                            a,
                                            b,
                                            VectorType::const_vector(&m),
                                            "",
                                        )?,
                                    )
                                } else {
                                    let (c0, s0) = cg.decode_codes(wf, wrow, t0, None)?;
                                    (c0, cg.splat_f32(cg.ftrunc(s0)?, 16)?)
                                };
                                let o = cg.mul(c, cg.c64(64))?;
                                let va = cg.load_i8xn(acp, cg.add(crow, o)?, 64)?;
                                let d = cg.vpdpbusd(i32x16.const_zero(), va, codes)?;
                                let corr =
                                    cg.vpdpbusd(i32x16.const_zero(), cg.splat_i8(aoff, 64), codes)?;
                                let d = cg.b.build_int_sub(d, corr, "")?;
                                let fd = cg.b.build_signed_int_to_float(d, f32x16, "")?;
                                let sa = cg.load_vec(asp, cg.add(srow, o)?, f32x16, 4)?;
                                let sc = cg.b.build_float_mul(sa, swv, "")?;
                                let a = cg.b.build_load(f32x16, facc, "")?.into_vector_value();
                                cg.b.build_store(facc, cg.fma_vec(fd, sc, a)?)?;
                                Ok(())
                            };
                            cg.for_n(cg.c64(full), |cg, c| chunk(cg, c, false))?;
                            if full * per < nb_i {
                                chunk(cg, cg.c64(full), true)?;
                            }
                            let a = cg.b.build_load(f32x16, facc, "")?;
                            let y = cg.reduce_fadd(a.into_vector_value())?;
                            cg.fext(y)?
                        } else if blocks {
                            // Σ_t (Σ a·w) · scale_a[t] · scale_w[t], in K order.
                            cg.b.build_store(acc, cg.cf64(0.0))?;
                            let crow = cg.mul(r, cg.c64(kpad))?;
                            let srow = cg.mul(r, cg.c64(nb_i))?;
                            cg.for_n(cg.c64(nb_i), |cg, t| {
                                let o = cg.mul(t, cg.c64(bl))?;
                                let va = cg.load_i8xn(acp, cg.add(crow, o)?, bl as u32)?;
                                let vw = cg.load_i8xn(wcodes, o, bl as u32)?;
                                let isum = cg.dot_i8(va, vw, bl as u32)?;
                                let sa = cg
                                    .load(DType::F64, asp, cg.add(srow, t)?)?
                                    .into_float_value();
                                let sw = cg.load(DType::F64, wsc, t)?.into_float_value();
                                let isf = cg.b.build_signed_int_to_float(isum, cg.f64t(), "")?;
                                let prod = cg.fmul(cg.fmul(isf, sa)?, sw)?;
                                let old = cg.b.build_load(cg.f64t(), acc, "")?.into_float_value();
                                cg.b.build_store(acc, cg.fadd(old, prod)?)?;
                                Ok(())
                            })?;
                            cg.b.build_load(cg.f64t(), acc, "")?.into_float_value()
                        } else {
                            let adp = p(13);
                            let drow = cg.mul(r, cg.c64(4 * k16))?;
                            for a in &haccs {
                                cg.b.build_store(*a, f32x16.const_zero())?;
                            }
                            cg.for_n(cg.c64(k16 / 64), |cg, c| {
                                for (u, acc4) in haccs.iter().enumerate() {
                                    let o =
                                        cg.add(cg.mul(c, cg.c64(256))?, cg.c64(64 * u as i64))?;
                                    let va = cg.load_vec(adp, cg.add(drow, o)?, f32x16, 4)?;
                                    let vw = cg.load_vec(wdec, o, f32x16, 4)?;
                                    let a = cg.b.build_load(f32x16, *acc4, "")?.into_vector_value();
                                    cg.b.build_store(*acc4, cg.fma_vec(va, vw, a)?)?;
                                }
                                Ok(())
                            })?;
                            let mut sum =
                                cg.b.build_load(f32x16, haccs[0], "")?.into_vector_value();
                            for acc4 in &haccs[1..] {
                                let a = cg.b.build_load(f32x16, *acc4, "")?.into_vector_value();
                                sum = cg.b.build_float_add(sum, a, "")?;
                            }
                            cg.b.build_store(hacc, sum)?;
                            let a = cg.b.build_load(f32x16, hacc, "")?;
                            let y = cg.reduce_fadd(a.into_vector_value())?;
                            cg.fext(y)?
                        };
                        Ok(v)
                    };
                    let mut first = rlo;
                    if vnni {
                        // Four rows at a time share each weight chunk, its
                        // correction and scales (loaded once, kept in registers).
                        let quads = cg.sdiv(rcount, cg.c64(4))?;
                        first = cg.add(rlo, cg.mul(quads, cg.c64(4))?)?;
                        cg.for_n(quads, |cg, q| {
                            let r0 = cg.add(rlo, cg.mul(q, cg.c64(4))?)?;
                            for a in &faccs {
                                cg.b.build_store(*a, f32x16.const_zero())?;
                            }
                            cg.for_n(cg.c64(kc / 64), |cg, c| {
                                let o = cg.mul(c, cg.c64(64))?;
                                let vw = cg.load_i8xn(wcodes, o, 64)?;
                                let corr = cg.load_vec(wcorr, o, i32x16, 4)?;
                                let sw = cg.load_vec(wscx, o, f32x16, 4)?;
                                for (u, fa) in faccs.iter().enumerate() {
                                    let r = cg.add(r0, cg.c64(u as i64))?;
                                    let crow = cg.mul(r, cg.c64(kc))?;
                                    let srow = cg.mul(r, cg.c64(4 * lanes))?;
                                    let va = cg.load_i8xn(acp, cg.add(crow, o)?, 64)?;
                                    let d = cg.vpdpbusd(i32x16.const_zero(), va, vw)?;
                                    let d = cg.b.build_int_sub(d, corr, "")?;
                                    let fd = cg.b.build_signed_int_to_float(d, f32x16, "")?;
                                    let sa = cg.load_vec(asp, cg.add(srow, o)?, f32x16, 4)?;
                                    let sc = cg.b.build_float_mul(sa, sw, "")?;
                                    let a = cg.b.build_load(f32x16, *fa, "")?.into_vector_value();
                                    cg.b.build_store(*fa, cg.fma_vec(fd, sc, a)?)?;
                                }
                                Ok(())
                            })?;
                            for (u, fa) in faccs.iter().enumerate() {
                                let a = cg.b.build_load(f32x16, *fa, "")?;
                                let y = cg.reduce_fadd(a.into_vector_value())?;
                                let v = cg.fext(y)?;
                                finish(cg, cg.add(r0, cg.c64(u as i64))?, j, v)?;
                            }
                            Ok(())
                        })?;
                    }
                    if cpu {
                        return Ok(());
                    }
                    cg.for_range(first, rhi, |cg, r| {
                        let v = single(cg, r)?;
                        finish(cg, r, j, v)
                    })
                })?;
                // HiF8 weights in the CPU layout: every row here (4-bit
                // ones run the strip kernel instead).
                let WLayout::Cpu { k } = lay else {
                    return Ok(());
                };
                let wrow = |cg: &Cg<'c>, j: IntValue<'c>| cg.gep_bytes(wp, cg.mul(j, cg.c64(bpr))?);
                // Column groups outside, rows inside: a group's weights
                // come from DRAM once (then from L1 for the other rows),
                // and with bf16 pairs each decoded vector serves two rows.
                let tile = if abr.is_some() { HIF8_ROW_TILE } else { 1 };
                let nrows = cg.sub(rhi, rlo)?;
                let cols = |cg: &mut Cg<'c>, js: Vec<IntValue<'c>>| -> R<()> {
                    let ws: Vec<PointerValue> =
                        js.iter().map(|&j| wrow(cg, j)).collect::<R<_>>()?;
                    for_row_tiles(cg, nrows, tile, |cg, r0, nr| {
                        let rs: Vec<IntValue> = (0..nr)
                            .map(|i| cg.add(rlo, cg.add(r0, cg.c64(i as i64))?))
                            .collect::<R<_>>()?;
                        let v = cpu_row_dot_hif8(cg, k, k16, &ws, &rs, p(13), abr)?;
                        for (&r, vr) in rs.iter().zip(v) {
                            for (&j, v) in js.iter().zip(vr) {
                                finish(cg, r, j, v)?;
                            }
                        }
                        Ok(())
                    })
                };
                let nc = CPU_COLS;
                let groups = cg.sdiv(cg.sub(hi, lo)?, cg.c64(nc))?;
                cg.for_n(groups, |cg, q| {
                    let j0 = cg.add(lo, cg.mul(q, cg.c64(nc))?)?;
                    let js: Vec<IntValue> =
                        (0..nc).map(|c| cg.add(j0, cg.c64(c))).collect::<R<_>>()?;
                    cols(cg, js)
                })?;
                let last = cg.add(lo, cg.mul(groups, cg.c64(nc))?)?;
                cg.for_range(last, hi, |cg, j| cols(cg, vec![j]))
            })
        })?;
    }
    cg.release(scratch)?;
    let mut dims = x.dims.clone();
    *dims.last_mut().expect("rank >= 1") = ntot;
    Ok(Val {
        ptr: y,
        dims,
        dt: DType::F32,
    })
}

/// Columns per `cpu_row_dot_hif8` call of the single-row path: they share every
/// activation load.
const CPU_COLS: i64 = 4;

/// Rows per `cpu_row_dot_hif8` call in bf16 pairs: each decoded vector
/// serves them all (2 rows: 16 accumulators and 4 activation vectors in
/// registers).
const HIF8_ROW_TILE: i64 = 2;

/// In step `g` of a single-row kernel over the adjacent weight rows
/// `wrows` (`bpr` bytes each, 64 bytes of each read per step): weight rows
/// are read in order (row j+1 follows row j), so one line per column and
/// step, consecutive, one call ahead (`wrows.len() · bpr` bytes) is
/// requested now: the next call's rows arrive while this call runs, which
/// keeps enough misses in flight for DRAM bandwidth (a prefetch past the
/// end is harmless). Into L1 when that is at most a third of it away, else
/// into L2.
fn prefetch_next_call<'c>(
    cg: &Cg<'c>,
    wrows: &[PointerValue<'c>],
    g: IntValue<'c>,
    bpr: i64,
) -> R<()> {
    let nc = wrows.len() as i64;
    for c in 0..nc {
        let ahead = cg.add(cg.mul(g, cg.c64(64 * nc))?, cg.c64(nc * bpr + 64 * c))?;
        cg.prefetch(cg.gep_bytes_ahead(wrows[0], ahead)?, nc * bpr <= 16 << 10)?;
    }
    Ok(())
}

/// The decode tables of 4-bit CPU-layout nibbles (see [`pack_cpu_panel`]
/// and [`strip_rows_dot`]): entry `16 x + code` is the offset code of
/// nibble `code` shifted left by `x`. MXFP4: `(2·E2M1 << x) + off` for x =
/// 0..3, one `vpermb`; HiF4: `±((code & 7) << sum(x)) + off` for the
/// K-group's micro-exponent bits of the 3 header bits x ([`IndexBits`]),
/// 128 entries in two halves, one `vpermi2b`. x is the field of the
/// K-group's pair (per-4 bits of the even and the odd K-group, then the
/// per-8 bit): an even K-group's table sums bits 0 and 2, an odd one's
/// bits 1 and 2, each ignoring the other K-group's bit.
struct NibbleTables<'c> {
    mx: bool,
    /// The two halves of the table, per parity of the K-group (MXFP4: one
    /// table, both entries).
    t: [(VectorValue<'c>, VectorValue<'c>); 2],
}

impl<'c> NibbleTables<'c> {
    /// `shifts: false` (MXFP4 unpaired): entry `i` is the offset code of
    /// nibble `i % 16`, so the lookup ignores index bits 4-5 and a byte's
    /// high nibble (or the bits a 16-bit shift moves in) need no mask.
    fn new(cg: &Cg<'c>, f: Format, off: u8, shifts: bool) -> Self {
        let i8v = |f: &dyn Fn(usize) -> u8| -> VectorValue<'c> {
            let v: Vec<_> = (0..64)
                .map(|i| cg.i8t().const_int(f(i) as u64, false))
                .collect();
            VectorType::const_vector(&v)
        };
        let off = off as i32;
        let mx = matches!(f, Format::Mxfp4(_));
        // The micro-exponent of K-group parity `p` from header bits x.
        let hif4_entry = |p: usize, i: usize| -> u8 {
            let (x, code) = (i / 16, i % 16);
            let sum = (x >> p & 1) + (x >> 2 & 1);
            let mag = ((code & 7) << sum) as i32;
            (if code & 8 != 0 { -mag } else { mag }).wrapping_add(off) as u8
        };
        if mx {
            let t = i8v(&|i| {
                ((mxfp4::E2M1_X2[i % 16] as i32) << (if shifts { i / 16 } else { 0 }))
                    .wrapping_add(off) as u8
            });
            NibbleTables { mx, t: [(t, t); 2] }
        } else {
            let half = |p: usize| (i8v(&|i| hif4_entry(p, i)), i8v(&|i| hif4_entry(p, 64 + i)));
            NibbleTables {
                mx,
                t: [half(0), half(1)],
            }
        }
    }

    /// The offset codes of `idx` (i8 × 64: nibble | shift field << 4) for
    /// K-group `j`.
    fn lookup(&self, cg: &Cg<'c>, idx: VectorValue<'c>, j: usize) -> R<VectorValue<'c>> {
        let (lo, hi) = self.t[j % 2];
        let v = if self.mx {
            cg.intrinsic(
                "llvm.x86.avx512.permvar.qi.512",
                &[],
                &[lo.into(), idx.into()],
            )?
        } else {
            cg.intrinsic(
                "llvm.x86.avx512.vpermi2var.qi.512",
                &[],
                &[lo.into(), idx.into(), hi.into()],
            )?
        };
        Ok(v.into_vector_value())
    }
}

/// HiF4: the f32 factors `E6M2 / 4` of 16 columns' unit header dwords
/// (CPU layout): exponent `(S >> 2) - 50`, two mantissa bits; 0xFF is NaN.
fn hif4_scales<'c>(cg: &Cg<'c>, hd: VectorValue<'c>) -> R<VectorValue<'c>> {
    let i32v = |v: u64| cg.splat_i32(cg.i32t().const_int(v, false), 16);
    let sb = cg.b.build_and(hd, i32v(255)?, "")?;
    let bits = cg.b.build_int_add(
        cg.b.build_left_shift(sb, i32v(21)?, "")?,
        i32v(77 << 23)?,
        "",
    )?;
    let nan =
        cg.b.build_int_compare(IntPredicate::EQ, sb, i32v(255)?, "")?;
    let bits =
        cg.b.build_select(nan, i32v(f32::NAN.to_bits() as u64)?, bits, "")?
            .into_vector_value();
    Ok(cg
        .b
        .build_bit_cast(bits, cg.f32t().vec_type(16), "")?
        .into_vector_value())
}

/// Bytes ahead in a strip's stream (codes, then headers) at which the strip kernel requests
/// the weights into L2 (a few strips ahead; its strips are read in order,
/// one stream per thread). Measured at M = 1, 5120x25600, 1 thread, on a
/// 32 MB-L3 host: into L1 512 B ahead (the hardware prefetchers doing the
/// rest) 4.7 ms (MXFP4) / 5.3 ms (HiF4); into L1 4-16 KB ahead slower
/// still; into L2 4 KB ahead 3.8 / 3.8 ms, 64 KB 3.3 / 3.1, 128 KB
/// 3.1 / 3.0, 256 KB 3.3 / 3.2 (L1 requests 1 KB ahead on top: no gain).
const STRIP_PREFETCH: i64 = 128 << 10;

/// 4-bit weights of at least this many bytes (a layer this size streams
/// from DRAM) have the strip kernel request each thread's first
/// [`STRIP_PREFETCH`] bytes before its loop, which requests only that far
/// ahead: else those come on demand. M = 1, 1 thread, cold, 80 alternating
/// runs each (median, without / with): 3072x1024 MXFP4 0.105 / 0.102 ms,
/// HiF4 0.131 / 0.126, 1024x3072 MXFP4 0.110 / 0.106. Below, weights are
/// more likely cached and the requests cost a cycle per 64 bytes.
const STRIP_HEAD_MIN_BYTES: i64 = 1 << 20;

/// 4-bit weights of at least this many bytes run the strip kernel for a
/// single row with one `pause` per group on AMD Zen targets: in a model
/// this size or larger the weights stream from DRAM. (More rows are slower
/// per byte: 2 rows paced or not measured the same; a 1-row pass after
/// others, its strip in L2, paced cost 5120x5120 M = 5 1.18 ms against
/// 0.87.) Its groups then take about 80 cycles longer, which caps the
/// kernel near 27 GB/s from cache (60 GB/s without), yet a single thread
/// reads DRAM faster: the unpaced
/// kernel, running ahead of its prefetches, held ~20 GB/s. MXFP4 on Zen 4,
/// M = 1, 1 thread, cold caches, 4 alternating runs each: 5120x25600 3.4-3.9
/// -> 2.7-3.3 ms, 25600x5120 3.6-3.8 -> 2.7-3.0 ms; 2 threads 2.4-2.8 ->
/// 2.3-2.7 ms. Two more `vpermb` per lookup in place of the pause did the
/// same (2.7-3.1 / 2.8-3.1 ms); prefetch distance (16 KB-768 KB), L1 hint,
/// order and placement, register broadcasts for the activations did not.
/// HiF4 paces too since one `vpmultishiftqb` serves a K-group pair (it
/// decodes about 45 GB/s from cache): M = 1 cold, 6 alternating runs each,
/// 25600x5120 and 5120x25600 1 thread 69.8 -> 75.6 GOP/s (mean of the
/// medians; lowest runs 3.47 -> 3.24 ms), 5120x5120 1 thread 0.80/0.72 ->
/// 0.76/0.65 ms, 2 threads 0.64/0.53 -> 0.45/0.44 ms; from cache (L3, a
/// model small enough to stay there) it halves the speed (5120x5120 0.32-0.39
/// -> 0.58-0.72 ms), as MXFP4's. Smaller weights pace only when one thread
/// runs them alone (see [`PACE_ALONE_MIN_BYTES`]).
const PACE_MIN_BYTES: i64 = 4 << 20;

/// A part of 4-bit weights of at least this many bytes (below
/// [`PACE_MIN_BYTES`]) paces a single row when one thread runs all of its
/// strips (one thread, or a loop too small to split). M = 1, cold, 30-40
/// alternating runs each, paced against unpaced: on 1 thread 3072x1024
/// (1.6 MB) MXFP4 0.098 / 0.118 ms, HiF4 0.102 / 0.114, 1024x3072 MXFP4
/// 0.102 / 0.111, HiF4 0.111 / 0.109, 5120x1024 (2.8 MB) MXFP4 0.142 /
/// 0.167, HiF4 0.147 / 0.156; split over 2 threads, paced was slower:
/// 1.6 MB 0.119-0.143 against 0.102-0.116 ms, 2.8 MB MXFP4 0.154 / 0.122,
/// HiF4 0.148 / 0.121.
const PACE_ALONE_MIN_BYTES: i64 = 1 << 20;

/// Rows below [`strip_max_rows`] against 4-bit weights in the CPU layout:
/// strips `lo..hi` of the part, each strip once for all rows (it stays in L2
/// between its passes), [`strip_rows_dot`] per pass of up to [`STRIP_ROWS`]
/// rows, the panel GEMM's epilogue. Captures as [`panel_gemm`]'s (the
/// activations' s8 codes, f32 block scales and corrections `-off · Σ a` are
/// the panel GEMM's).
fn strip_gemm<'c>(
    cg: &mut Cg<'c>,
    s: &PanelSpec,
    c: &[BasicValueEnum<'c>],
    lo: IntValue<'c>,
    hi: IntValue<'c>,
) -> R<()> {
    let p = |i: usize| c[i].into_pointer_value();
    let iv = |i: usize| c[i].into_int_value();
    let (wp, yp) = (p(0), p(1));
    let (rows, ntot, coff) = (iv(2), iv(4), iv(5));
    let (bp, rp) = (p(6), p(7));
    let acts = (p(8), p(9), p(10));
    let WLayout::Cpu { k } = s.lay else {
        return cg.err("the strip kernel reads the CPU layout only");
    };
    let strip = layout::STRIP as i64;
    // Bytes of one strip (its codes and headers).
    let strip_bytes = strip * s.bpr;
    let facc = cg.b.build_alloca(cg.f32t().vec_type(16), "sacc")?;
    let tile =
        cg.b.build_array_alloca(cg.f32t(), cg.i32t().const_int(strip as u64, false), "stile")?;
    // MXFP4 strips run unpaired: the table that needs no masks.
    let tabs = NibbleTables::new(cg, s.wf, s.off, false);
    let epi = Epilogue {
        y: yp,
        ntot,
        coff,
        bias: s.has_b.then_some(bp),
        residual: s.has_r.then_some(rp),
        act: s.act.as_deref(),
        exps: None,
    };
    let rb = STRIP_ROWS;
    // A single row paces over large weights, or when this chunk is the
    // whole part and large enough (see PACE_MIN_BYTES).
    let alone = cg.and(
        cg.icmp(IntPredicate::EQ, lo, cg.c64(0))?,
        cg.icmp(IntPredicate::EQ, hi, cg.sdiv(iv(3), cg.c64(strip))?)?,
    )?;
    let part = cg.mul(hi, cg.c64(strip_bytes))?;
    let alone = cg.and(
        alone,
        cg.icmp(IntPredicate::SGE, part, cg.c64(PACE_ALONE_MIN_BYTES))?,
    )?;
    let share_paced = if s.paced_always {
        cg.cx.bool_type().const_int(1, false)
    } else {
        alone
    };
    // The groups request the stream STRIP_PREFETCH bytes ahead: over
    // weights streamed from DRAM the chunk's first STRIP_PREFETCH bytes (or
    // all of it) are requested here (see STRIP_HEAD_MIN_BYTES).
    if s.head {
        let first = cg.gep_bytes(wp, cg.mul(lo, cg.c64(strip_bytes))?)?;
        let bytes = cg.smin(
            cg.mul(cg.sub(hi, lo)?, cg.c64(strip_bytes))?,
            cg.c64(STRIP_PREFETCH),
        )?;
        let lines = cg.sdiv(bytes, cg.c64(64))?;
        cg.for_range_with(cg.c64(0), lines, LoopHint::NoUnroll, |cg, l| {
            cg.prefetch(cg.gep_bytes(first, cg.mul(l, cg.c64(64))?)?, false)
        })?;
    }
    cg.for_range(lo, hi, |cg, st| {
        let sp = cg.gep_bytes(wp, cg.mul(st, cg.c64(strip_bytes))?)?;
        let c0 = cg.mul(st, cg.c64(strip))?;
        let run = |cg: &mut Cg<'c>, r0: IntValue<'c>, nr: usize, pace: bool| -> R<()> {
            let vs = strip_rows_dot(cg, s, k, &tabs, sp, r0, nr, pace, acts)?;
            for (i, v) in vs.into_iter().enumerate() {
                cg.b.build_store(facc, v)?;
                let r = cg.add(r0, cg.c64(i as i64))?;
                write_tile(cg, &epi, &[facc], tile, strip, (r, c0, cg.c64(strip)))?;
            }
            Ok(())
        };
        // Passes of `rb` rows, then the rows left over in one pass; a
        // single row alone paces itself (see PACE_MIN_BYTES), the passes
        // after the first read the strip from L2.
        let one = cg.icmp(IntPredicate::EQ, rows, cg.c64(1))?;
        let many = |cg: &mut Cg<'c>| -> R<()> {
            let full = cg.sdiv(rows, cg.c64(rb))?;
            cg.for_n(full, |cg, q| {
                run(cg, cg.mul(q, cg.c64(rb))?, rb as usize, false)
            })?;
            let r0 = cg.mul(full, cg.c64(rb))?;
            let left = cg.sub(rows, r0)?;
            for nr in 1..rb {
                let is = cg.icmp(IntPredicate::EQ, left, cg.c64(nr))?;
                cg.if_then(is, |cg| run(cg, r0, nr as usize, false))?;
            }
            Ok(())
        };
        if s.paced {
            let pace = cg.and(one, share_paced)?;
            cg.if_else(pace, |cg| run(cg, cg.c64(0), 1, true), many)
        } else {
            many(cg)
        }
    })
}

/// Rows below which 4-bit weights in the CPU layout run the strip kernel
/// (from there the panel GEMM). Measured on 5120x5120, 1 thread, cold
/// caches (ms, strips / panels): MXFP4 M = 4 0.60 / 2.33, 8 1.17 / 2.97,
/// 16 2.72 / 4.62, 32 5.46 / 7.98, 48 8.04 / 11.04, 64 10.79 / 10.41 (the
/// panels pair blocks from there); HiF4, whose strips decode more per
/// vector, 4 1.05 / 2.17, 8 2.02 / 2.76, 12 2.65 / 3.26, 16 3.98 / 3.82.
/// MXFP4 strips must stay below `PAIR_MIN_ROWS`: from there the prologue
/// shifts the activations' codes for the panels' block pairs.
fn strip_max_rows(wf: Format) -> i64 {
    if matches!(wf, Format::Mxfp4(_)) {
        PAIR_MIN_ROWS
    } else {
        16
    }
}

/// Rows per pass of the strip kernel: each 64-byte vector of the strip is
/// decoded once for all of them (per row 6 vectors of sums stay in
/// registers). Measured on 5120x5120 MXFP4, M = 8, 1 thread: 2 rows per
/// pass 1.71 ms, 3 1.25, 4 1.17, 6 1.42.
const STRIP_ROWS: i64 = 4;

/// MXFP4 weights of K up to this many run the strip kernel with one f32 sum
/// per row instead of one per half group: with short rows, whose group loop
/// LLVM unrolls, the second set of sums spilled the decoded vectors to the
/// stack. Measured on the Qwen3 prefill fixture (K = 128 to 384, M = 12,
/// 1 thread, 8 processes each): 94.0-94.4 -> 90.3-90.4 us (lower quartile);
/// 1024x3072 cold M = 8/12 the same (0.202/0.286 against 0.205/0.295 ms);
/// 5120x5120 cold M = 4-12 5-10% slower, its one chain of multiply-adds per
/// row then 40 groups long; HiF4, whose strips decode more per vector, was
/// slower on the fixture (105-106 against 103 us).
const STRIP_ONE_SUM_MAX_K: i64 = 1024;

/// Activation rows `r0..r0 + nr` times the 16 columns of the strip at `sp`
/// (K = `k`, 4-bit CPU layout), per row 16 f32 sums. Per 64-byte vector of
/// a group: one AND (or shift and AND) gives a K-group of 4 across the 16
/// columns, one table lookup (`vpermb`; HiF4 `vpermi2b` with each
/// K-group's micro-exponent shift from the unit's header vector) the
/// offset codes, once for all the rows; per row, `vpdpbusd` with its 4
/// codes of that K-group broadcast adds them to the block's i32 sums,
/// started at the block's correction, and per block one f32 multiply-add
/// with the scale products (the column's from the header vector, the row's
/// broadcast). No horizontal sums: each lane is a column. `pace`: one
/// `pause` per group (see [`PACE_MIN_BYTES`]).
#[allow(clippy::too_many_arguments)]
fn strip_rows_dot<'c>(
    cg: &mut Cg<'c>,
    s: &PanelSpec,
    k: i64,
    tabs: &NibbleTables<'c>,
    sp: PointerValue<'c>,
    r0: IntValue<'c>,
    nr: usize,
    pace: bool,
    (as8, asb, acs): (PointerValue<'c>, PointerValue<'c>, PointerValue<'c>),
) -> R<Vec<VectorValue<'c>>> {
    let mx = matches!(s.wf, Format::Mxfp4(_));
    let i32x16 = cg.i32t().vec_type(16);
    let f32x16 = cg.f32t().vec_type(16);
    let i8x64 = cg.i8t().vec_type(64);
    let strip = layout::STRIP as i64;
    // Per row: its s8 codes, f32 block scales and corrections.
    let mut rp = Vec::with_capacity(nr);
    for i in 0..nr {
        let r = cg.add(r0, cg.c64(i as i64))?;
        rp.push((
            cg.gep_bytes(as8, cg.mul(r, cg.c64(s.kc))?)?,
            cg.gep(DType::F32, asb, cg.mul(r, cg.c64(s.nb))?)?,
            cg.gep(DType::I32, acs, cg.mul(r, cg.c64(s.nb))?)?,
        ));
    }
    let hdr = cg.gep_bytes(sp, cg.c64(strip * k / 2))?;
    // Header bytes per group: MXFP4 one vector, HiF4 two (one per unit).
    let hpg: i64 = if mx { 64 } else { 128 };
    // Per row, two f32 sums (one per half group), or one (see
    // STRIP_ONE_SUM_MAX_K).
    let one = mx && k <= STRIP_ONE_SUM_MAX_K;
    let accs: Vec<[PointerValue; 2]> = (0..nr)
        .map(|_| {
            let a = cg.entry_alloca(f32x16.into(), 1)?;
            let b = if one {
                a
            } else {
                cg.entry_alloca(f32x16.into(), 1)?
            };
            Ok::<_, CgError>([a, b])
        })
        .collect::<R<_>>()?;
    for &[a0, a1] in &accs {
        cg.b.build_store(a0, f32x16.const_zero())?;
        if a1 != a0 {
            cg.b.build_store(a1, f32x16.const_zero())?;
        }
    }
    let zeros = VectorType::const_vector(&[cg.i32t().const_zero(); 16]);
    cg.for_n(cg.c64(k / layout::GROUP as i64), |cg, g| {
        // A single row runs ahead of the DRAM stream (see PACE_MIN_BYTES);
        // more rows are slow enough.
        if pace {
            cg.pause()?;
        }
        // The strip is one stream of `1024 + hpg` bytes per group (its
        // codes, then its headers): each group requests its share of it,
        // STRIP_PREFETCH bytes ahead, so that the strips further on
        // arrive headers included.
        let share = 1024 + hpg;
        let ahead = cg.add(cg.mul(g, cg.c64(share))?, cg.c64(STRIP_PREFETCH))?;
        for l in 0..share / 64 {
            cg.prefetch(
                cg.gep_bytes_ahead(sp, cg.add(ahead, cg.c64(64 * l))?)?,
                false,
            )?;
        }
        let hat = cg.mul(g, cg.c64(hpg))?;
        // Block (MXFP4) or unit (HiF4) index of half h, chain b.
        let t_of = |cg: &Cg<'c>, h: i64, b: i64| -> R<IntValue<'c>> {
            if mx {
                cg.add(cg.mul(g, cg.c64(4))?, cg.c64(2 * h + b))
            } else {
                cg.add(cg.mul(g, cg.c64(2))?, cg.c64(h))
            }
        };
        let splat_i32_at = |cg: &Cg<'c>, p: PointerValue<'c>, at: IntValue<'c>| {
            let d = cg.load_vec(p, at, cg.i32t().vec_type(1), 4)?;
            Ok::<_, CgError>(cg.b.build_shuffle_vector(d, d, zeros, "")?)
        };
        // i32 chains per row: MXFP4 per half the two blocks (K-groups 0-7,
        // 8-15), each started at its correction; HiF4 per half its unit in
        // two chains (even and odd K-groups), the first started at it.
        let mut iacc: Vec<[[VectorValue<'c>; 2]; 2]> = Vec::with_capacity(nr);
        for &(_, _, csr) in &rp {
            let mut per = [[i32x16.const_zero(); 2]; 2];
            for (h, ph) in per.iter_mut().enumerate() {
                let h = h as i64;
                ph[0] = splat_i32_at(cg, csr, cg.mul(t_of(cg, h, 0)?, cg.c64(4))?)?;
                if mx {
                    ph[1] = splat_i32_at(cg, csr, cg.mul(t_of(cg, h, 1)?, cg.c64(4))?)?;
                }
            }
            iacc.push(per);
        }
        let mut bits: Vec<Option<IndexBits<'c>>> = Vec::with_capacity(2);
        for h in 0..2 {
            bits.push(if mx {
                None
            } else {
                let hd = cg.load_vec(hdr, cg.add(hat, cg.c64(64 * h))?, i8x64, 1)?;
                Some(IndexBits::Hif4Header(hd))
            });
        }
        // MXFP4's chains are its blocks (K-groups 0-7 and 8-15): taken
        // alternately, so that four chains, not two, are in flight (as
        // HiF4's even and odd K-groups are). Each vector is decoded once
        // for all the rows.
        for qq in 0..16usize {
            let q = if mx { qq % 2 * 8 + qq / 2 } else { qq };
            let v = cg.load_vec(
                sp,
                cg.add(cg.mul(g, cg.c64(1024))?, cg.c64(64 * q as i64))?,
                i8x64,
                1,
            )?;
            for h in 0..2usize {
                let idx = if mx {
                    // The unshifted table reads bits 0-3 only: no masks.
                    nibbles(cg, v, h)?
                } else {
                    let x = bits[h]
                        .as_ref()
                        .map(|b| b.bits(cg, q))
                        .transpose()?
                        .flatten();
                    nibble_index(cg, v, h, x)?
                };
                let w = tabs.lookup(cg, idx, q)?;
                let at = cg.add(
                    cg.mul(g, cg.c64(128))?,
                    cg.c64(64 * h as i64 + 4 * q as i64),
                )?;
                let b = if mx { q / 8 } else { q % 2 };
                for (ia, &(a8, _, _)) in iacc.iter_mut().zip(&rp) {
                    let a = splat_i32_at(cg, a8, at)?;
                    let a = cg.b.build_bit_cast(a, i8x64, "")?.into_vector_value();
                    ia[h][b] = cg.vpdpbusd(ia[h][b], w, a)?;
                }
            }
        }
        let mxh = if mx {
            Some(cg.load_vec(hdr, hat, i32x16, 1)?)
        } else {
            None
        };
        for h in 0..2i64 {
            // The weights' scales of half h: MXFP4 per block (byte 2h + b
            // of each lane, the block's E8M0 minus one, shifted into the
            // exponent: 2^(s-128)), HiF4 per unit.
            let ws: Vec<(IntValue<'c>, VectorValue<'c>)> = if let Some(hd) = mxh {
                (0..2)
                    .map(|b| {
                        let sh =
                            cg.splat_i32(cg.i32t().const_int(8 * (2 * h + b) as u64, false), 16)?;
                        let e = cg.b.build_right_shift(hd, sh, false, "")?;
                        let e = cg.b.build_and(
                            e,
                            cg.splat_i32(cg.i32t().const_int(255, false), 16)?,
                            "",
                        )?;
                        let e = cg.b.build_left_shift(
                            e,
                            cg.splat_i32(cg.i32t().const_int(23, false), 16)?,
                            "",
                        )?;
                        let ws = cg.b.build_bit_cast(e, f32x16, "")?.into_vector_value();
                        Ok((t_of(cg, h, b)?, ws))
                    })
                    .collect::<R<_>>()?
            } else {
                let hd = cg.load_vec(hdr, cg.add(hat, cg.c64(64 * h))?, i32x16, 1)?;
                vec![(t_of(cg, h, 0)?, hif4_scales(cg, hd)?)]
            };
            for ((acc, ia), &(_, sbr, _)) in accs.iter().zip(&iacc).zip(&rp) {
                let ia = ia[h as usize];
                let sums: Vec<VectorValue<'c>> = if mx {
                    ia.to_vec()
                } else {
                    vec![cg.b.build_int_add(ia[0], ia[1], "")?]
                };
                let acc = acc[h as usize];
                let mut a = cg.b.build_load(f32x16, acc, "")?.into_vector_value();
                for (&(t, ws), d) in ws.iter().zip(sums) {
                    let sa = cg.splat_f32(cg.load_f32(sbr, t)?, 16)?;
                    let sc = cg.b.build_float_mul(ws, sa, "")?;
                    let fd = cg.b.build_signed_int_to_float(d, f32x16, "")?;
                    a = cg.fma_vec(fd, sc, a)?;
                }
                cg.b.build_store(acc, a)?;
            }
        }
        Ok(())
    })?;
    accs.iter()
        .map(|[a0, a1]| {
            if a0 == a1 {
                return Ok(cg.b.build_load(f32x16, *a0, "")?.into_vector_value());
            }
            let a0 = cg.b.build_load(f32x16, *a0, "")?.into_vector_value();
            let a1 = cg.b.build_load(f32x16, *a1, "")?.into_vector_value();
            Ok(cg.b.build_float_add(a0, a1, "")?)
        })
        .collect()
}

/// `vpunpck{l,h}{bw,wd}`: per 128-bit lane, interleave the low (or high)
/// halves of `a` and `b`, elements of `elem` bytes.
fn unpack<'c>(
    cg: &Cg<'c>,
    a: VectorValue<'c>,
    b: VectorValue<'c>,
    elem: u32,
    hi: bool,
) -> R<VectorValue<'c>> {
    let per = 16 / elem; // elements per 128-bit lane
    let n = 64 / elem;
    let m: Vec<_> = (0..n)
        .map(|x| {
            let (lane, j) = (x / per, x % per);
            let src = lane * per + j / 2 + if hi { per / 2 } else { 0 };
            let at = src + if j % 2 == 1 { n } else { 0 };
            cg.i32t().const_int(at as u64, false)
        })
        .collect();
    Ok(cg
        .b
        .build_shuffle_vector(a, b, VectorType::const_vector(&m), "")?)
}

/// The element of a 64-code CPU-layout chunk at each position of
/// `Hif8Decoder::decode_bf16`'s two vectors (positions 0-31 the first).
fn hif8_bf16_order() -> [u8; 64] {
    let mut t = [0u8; 64];
    for (i, e) in t.iter_mut().enumerate() {
        let (half, j) = (i / 32, i % 32);
        let byte = 16 * (j / 8) + 8 * half + j % 8;
        *e = layout::hif8_element(byte) as u8;
    }
    t
}

/// Activation row `r` of the row kernel's bf16 form: per 64 elements, the
/// top halves of the exact f32 decodes `drow` in `hif8_bf16_order`, so that
/// `vdpbf16ps` pairs each with its weight.
fn hif8_row_bf16<'c>(
    cg: &mut Cg<'c>,
    drow: PointerValue<'c>,
    k16: i64,
    abr: PointerValue<'c>,
    r: IntValue<'c>,
) -> R<()> {
    let order: Vec<i8> = hif8_bf16_order().iter().map(|&e| e as i8).collect();
    let tab = cg.table_i8("lpc.hif8.bf16order", &order);
    let brow = cg.gep(DType::Bf16, abr, cg.mul(r, cg.c64(k16))?)?;
    cg.for_n(cg.c64(k16), |cg, i| {
        let t = cg.b.build_and(i, cg.c64(63), "")?;
        let src = cg.add(cg.sub(i, t)?, cg.zext64(cg.load_u8(tab, t)?)?)?;
        let v = cg.load_f32(drow, src)?;
        let bits = cg.b.build_bit_cast(v, cg.i32t(), "")?.into_int_value();
        let hi =
            cg.b.build_right_shift(bits, cg.i32t().const_int(16, false), false, "")?;
        let h = cg.b.build_int_truncate(hi, cg.cx.i16_type(), "")?;
        cg.b.build_store(cg.gep_bytes(brow, cg.mul(i, cg.c64(2))?)?, h)?;
        Ok(())
    })
}

/// The in-register HiF8 decode of the CPU layout: two `vpermi2b` tables
/// give the high and low bytes of each code's exact f32 value (every HiF8
/// value fits the top 16 bits), the sign is the code's top bit, byte and
/// word unpacks place them: 64 codes in, 4 × 16 f32 out in natural order
/// (the layout's per-chunk permutation undoes the unpacks' lane order).
struct Hif8Decoder<'c> {
    tables: [VectorValue<'c>; 4],
}

impl<'c> Hif8Decoder<'c> {
    fn new(cg: &Cg<'c>) -> Self {
        // Tables of the magnitudes' f32 bytes 3 (high) and 2, 64 entries
        // each half (`vpermi2b` takes index bit 6 as the half, ignores bit 7).
        let half = |byte: u32, from: u32| -> VectorValue<'c> {
            let v: Vec<_> = (from..from + 64)
                .map(|c| {
                    cg.i8t().const_int(
                        ((hif8::DECODE_F32_BITS[c as usize] >> (8 * byte)) & 255) as u64,
                        false,
                    )
                })
                .collect();
            VectorType::const_vector(&v)
        };
        Self {
            tables: [half(3, 0), half(3, 64), half(2, 0), half(2, 64)],
        }
    }

    /// The 64 codes' bf16 values (the top halves of their exact f32
    /// values) as 2 × 32 i16: byte positions 16L + i of the chunk (i < 8)
    /// in the first, 16L + 8 + i in the second, L the 128-bit lane
    /// (`hif8_bf16_order`).
    fn decode_bf16(&self, cg: &Cg<'c>, code: VectorValue<'c>) -> R<[VectorValue<'c>; 2]> {
        let look = |t0: VectorValue<'c>, t1: VectorValue<'c>| -> R<VectorValue<'c>> {
            Ok(cg
                .intrinsic(
                    "llvm.x86.avx512.vpermi2var.qi.512",
                    &[],
                    &[t0.into(), code.into(), t1.into()],
                )?
                .into_vector_value())
        };
        let [hi0, hi1, lo0, lo1] = self.tables;
        let hi = look(hi0, hi1)?;
        let lo = look(lo0, lo1)?;
        let sign = cg.b.build_and(code, cg.splat_i8(0x80, 64), "")?;
        let hi = cg.b.build_or(hi, sign, "")?;
        Ok([unpack(cg, lo, hi, 1, false)?, unpack(cg, lo, hi, 1, true)?])
    }

    fn decode(&self, cg: &Cg<'c>, code: VectorValue<'c>) -> R<[VectorValue<'c>; 4]> {
        let f32x16 = cg.f32t().vec_type(16);
        let i8x64 = cg.i8t().vec_type(64);
        let [w0, w1] = self.decode_bf16(cg, code)?;
        let i16x32 = cg.cx.i16_type().vec_type(32);
        let as16 = |v: VectorValue<'c>| -> R<VectorValue<'c>> {
            Ok(cg.b.build_bit_cast(v, i16x32, "")?.into_vector_value())
        };
        let z16 = as16(i8x64.const_zero())?;
        let (w0, w1) = (as16(w0)?, as16(w1)?);
        let fs = [
            unpack(cg, z16, w0, 2, false)?,
            unpack(cg, z16, w0, 2, true)?,
            unpack(cg, z16, w1, 2, false)?,
            unpack(cg, z16, w1, 2, true)?,
        ];
        let f = |v: VectorValue<'c>| -> R<VectorValue<'c>> {
            Ok(cg.b.build_bit_cast(v, f32x16, "")?.into_vector_value())
        };
        Ok([f(fs[0])?, f(fs[1])?, f(fs[2])?, f(fs[3])?])
    }
}

/// W8A8 HiF8: the dot products of the exact decodes of activation rows `rows`
/// (`adec`, rows of `k16` f32) with one or more weight rows in the CPU
/// layout, as f64 per row and weight row; each weight vector is decoded once
/// for all the rows. Per 64 codes: two `vpermi2b` lookups give the high and
/// low bytes of each code's f32 value (every HiF8 value is exact in the top
/// 16 bits; the tables hold the magnitudes, the sign is OR-ed in), byte and
/// word unpacks place them as 4 × 16 f32 in natural order (the layout
/// permuted the codes for that), 4 FMAs into per-column accumulators. With
/// `abr` (AVX-512 BF16: the rows of bf16 decodes in `hif8_bf16_order`) the
/// byte unpacks' 2 × 32 bf16 go straight into 2 `vdpbf16ps` (5120x25600,
/// M = 1, 1 thread: 77 -> 95% of the read bandwidth).
fn cpu_row_dot_hif8<'c>(
    cg: &mut Cg<'c>,
    k: i64,
    k16: i64,
    wrows: &[PointerValue<'c>],
    rows: &[IntValue<'c>],
    adec: PointerValue<'c>,
    abr: Option<PointerValue<'c>>,
) -> R<Vec<Vec<FloatValue<'c>>>> {
    let f32x16 = cg.f32t().vec_type(16);
    let dec = Hif8Decoder::new(cg);
    let nc = wrows.len();
    let nr = rows.len();
    // Accumulators per row and column: 4 (f32 FMAs) or 2 (bf16 pairs).
    let na = if abr.is_some() { 2 } else { 4 };
    let accs: Vec<PointerValue> = (0..na * nc * nr)
        .map(|_| cg.entry_alloca(f32x16.into(), 1))
        .collect::<R<_>>()?;
    for acc in &accs {
        cg.b.build_store(*acc, f32x16.const_zero())?;
    }
    let (ap, bf16) = abr.map_or((adec, false), |a| (a, true));
    let i32x16 = cg.i32t().vec_type(16);
    // Bytes per activation element.
    let eb: i64 = if bf16 { 2 } else { 4 };
    let abases: Vec<IntValue> = rows
        .iter()
        .map(|&r| cg.mul(r, cg.c64(eb * k16)))
        .collect::<R<_>>()?;
    // Accumulator q of row i, column c.
    let ai = |i: usize, c: usize, q: usize| na * (nc * i + c) + q;
    cg.for_n(cg.c64(k / 64), |cg, g| {
        prefetch_next_call(cg, wrows, g, k)?;
        let at = cg.mul(g, cg.c64(64))?;
        let mut av: Vec<Vec<VectorValue>> = Vec::with_capacity(nr);
        for &abase in &abases {
            av.push(
                (0..na as i64)
                    .map(|q| {
                        let o = cg.add(abase, cg.add(cg.mul(at, cg.c64(eb))?, cg.c64(64 * q))?)?;
                        cg.load_vec(ap, o, if bf16 { i32x16 } else { f32x16 }, eb as u32)
                    })
                    .collect::<R<_>>()?,
            );
        }
        for (ci, w) in wrows.iter().enumerate() {
            let code = cg.load_i8xn(*w, at, 64)?;
            let wvs: Vec<VectorValue> = if bf16 {
                dec.decode_bf16(cg, code)?.to_vec()
            } else {
                dec.decode(cg, code)?.to_vec()
            };
            for (q, wv) in wvs.into_iter().enumerate() {
                let wv = if bf16 {
                    cg.b.build_bit_cast(wv, i32x16, "")?.into_vector_value()
                } else {
                    wv
                };
                for (i, avr) in av.iter().enumerate() {
                    let acc = accs[ai(i, ci, q)];
                    let old = cg.b.build_load(f32x16, acc, "")?.into_vector_value();
                    let new = if bf16 {
                        cg.vdpbf16ps(old, avr[q], wv)?
                    } else {
                        cg.fma_vec(avr[q], wv, old)?
                    };
                    cg.b.build_store(acc, new)?;
                }
            }
        }
        Ok(())
    })?;
    (0..nr)
        .map(|i| {
            (0..nc)
                .map(|c| {
                    let mut sum =
                        cg.b.build_load(f32x16, accs[ai(i, c, 0)], "")?
                            .into_vector_value();
                    for q in 1..na {
                        let a =
                            cg.b.build_load(f32x16, accs[ai(i, c, q)], "")?
                                .into_vector_value();
                        sum = cg.b.build_float_add(sum, a, "")?;
                    }
                    cg.fext(cg.reduce_fadd(sum)?)
                })
                .collect()
        })
        .collect()
}

/// A 64-byte aligned buffer of `bytes` bytes for a panel (up to a few MB:
/// kept off the stack, since a parallel body's first chunk runs on the
/// caller's thread, whose stack may be small): the calling thread's
/// scratch slot `slot` (`lpc_rt_scratch`, kept between calls, nothing to
/// free). Out of memory aborts, as Rust's allocator does (a parallel body
/// cannot return an error).
fn panel_buffer<'c>(cg: &Cg<'c>, slot: i32, bytes: i64) -> R<PointerValue<'c>> {
    panel_buffer_n(cg, slot, cg.c64(bytes))
}

/// [`panel_buffer`] of a run-time size.
fn panel_buffer_n<'c>(cg: &Cg<'c>, slot: i32, bytes: IntValue<'c>) -> R<PointerValue<'c>> {
    let buf = cg
        .call_value(
            cg.rt("lpc_rt_scratch"),
            &[cg.i32t().const_int(slot as u64, false).into(), bytes.into()],
        )?
        .into_pointer_value();
    let null = cg.b.build_is_null(buf, "")?;
    let abort = cg.m.get_function("abort").unwrap_or_else(|| {
        cg.m.add_function(
            "abort",
            cg.cx.void_type().fn_type(&[], false),
            Some(Linkage::External),
        )
    });
    let bad = cg.cx.append_basic_block(cg.f, "panel.oom");
    let good = cg.cx.append_basic_block(cg.f, "panel.ok");
    cg.b.build_conditional_branch(null, bad, good)?;
    cg.b.position_at_end(bad);
    cg.call_void(abort, &[])?;
    cg.b.build_unreachable()?;
    cg.b.position_at_end(good);
    Ok(buf)
}

/// Where a panel GEMM's results go and what happens on the way.
struct Epilogue<'c, 'a> {
    y: PointerValue<'c>,
    ntot: IntValue<'c>,
    /// The part's first output column.
    coff: IntValue<'c>,
    bias: Option<PointerValue<'c>>,
    residual: Option<PointerValue<'c>>,
    act: Option<&'a str>,
    /// Scaled HiF8: per-row activation and per-column weight exponents.
    #[allow(clippy::type_complexity)]
    exps: Option<(Option<PointerValue<'c>>, Option<PointerValue<'c>>)>,
}

/// Writes a tile of f32 accumulators (`mr` rows of `nr / 16` vectors,
/// row-major in `facc`) to rows `r0..` and columns `c0..c0 + ncols` of y:
/// times `2^-(e_row + e_col)` (scaled HiF8), plus the bias, through the
/// activation, plus the residual, as the row path's epilogue does.
fn write_tile<'c>(
    cg: &mut Cg<'c>,
    e: &Epilogue<'c, '_>,
    facc: &[PointerValue<'c>],
    tile: PointerValue<'c>,
    nr: i64,
    (r0, c0, ncols): (IntValue<'c>, IntValue<'c>, IntValue<'c>),
) -> R<()> {
    let f32x16 = cg.f32t().vec_type(16);
    let nv = (nr / 16) as usize;
    let mr = facc.len() / nv;
    for (i, fa) in facc.iter().enumerate() {
        let a = cg.b.build_load(f32x16, *fa, "")?.into_vector_value();
        let o = cg.c64(4 * ((i / nv) as i64 * nr + 16 * (i % nv) as i64));
        cg.store_vec_f32(tile, o, a)?;
    }
    for r in 0..mr {
        let ri = cg.add(r0, cg.c64(r as i64))?;
        cg.for_n(ncols, |cg, cc| {
            let v = cg.load_f32(tile, cg.add(cg.c64(r as i64 * nr), cc)?)?;
            let j = cg.add(c0, cc)?;
            let mut v = cg.fext(v)?;
            if let Some((ea, ew)) = e.exps {
                let mut x = cg.c64(0);
                if let Some(p) = ea {
                    let t = cg.load(DType::I32, p, ri)?.into_int_value();
                    x = cg.add(x, cg.sext64(t)?)?;
                }
                if let Some(p) = ew {
                    let t = cg.load(DType::I32, p, j)?.into_int_value();
                    x = cg.add(x, cg.sext64(t)?)?;
                }
                // 2^-x in two steps keeps each factor normal.
                let neg = cg.sub(cg.c64(0), x)?;
                let h = cg.sdiv(neg, cg.c64(2))?;
                v = cg.fmul(cg.fmul(v, cg.pow2_f64(h)?)?, cg.pow2_f64(cg.sub(neg, h)?)?)?;
            }
            if let Some(bp) = e.bias {
                v = cg.fadd(v, cg.fext(cg.load_f32(bp, cg.add(e.coff, j)?)?)?)?;
            }
            let mut y32 = cg.epilogue(cg.ftrunc(v)?, e.act)?;
            let yi = cg.add(cg.add(cg.mul(ri, e.ntot)?, e.coff)?, j)?;
            if let Some(rp) = e.residual {
                y32 = cg.fadd(y32, cg.load_f32(rp, yi)?)?;
            }
            cg.store(DType::F32, e.y, yi, y32.into())
        })?;
    }
    Ok(())
}

/// Runs `rows` rows as full tiles of `mr` rows, then the rows left over as
/// tiles of the powers of two below `mr` that their count's bits select;
/// `run(cg, first_row, tile_rows)` emits one tile.
fn for_row_tiles<'c>(
    cg: &mut Cg<'c>,
    rows: IntValue<'c>,
    mr: i64,
    run: impl Fn(&mut Cg<'c>, IntValue<'c>, usize) -> R<()>,
) -> R<()> {
    let tiles = cg.sdiv(rows, cg.c64(mr))?;
    cg.for_n(tiles, |cg, q| run(cg, cg.mul(q, cg.c64(mr))?, mr as usize))?;
    let mut r0 = cg.mul(tiles, cg.c64(mr))?;
    let left = cg.sub(rows, r0)?;
    for m in (0..63).rev().map(|i| 1i64 << i).filter(|&m| m < mr) {
        let bit = cg.b.build_and(left, cg.c64(m), "")?;
        let is = cg.icmp(IntPredicate::NE, bit, cg.c64(0))?;
        cg.if_then(is, |cg| run(cg, r0, m as usize))?;
        r0 = cg.add(r0, bit)?;
    }
    Ok(())
}

/// Stores transposed panel rows: `ws[i]` (16 lanes of 4 bytes) at panel
/// row `row0 + i`, columns `16 u ..` of an `nr`-column panel.
fn store_panel_rows<'c>(
    cg: &Cg<'c>,
    pan: PointerValue<'c>,
    ws: Vec<VectorValue<'c>>,
    row0: IntValue<'c>,
    nr: i64,
    u: IntValue<'c>,
) -> R<()> {
    for (i, w) in ws.into_iter().enumerate() {
        let row = cg.add(row0, cg.c64(i as i64))?;
        let at = cg.mul(
            cg.add(cg.mul(row, cg.c64(nr))?, cg.mul(u, cg.c64(16))?)?,
            cg.c64(4),
        )?;
        cg.store_vec_aligned(pan, at, w, 64)?;
    }
    Ok(())
}

/// Columns per panel of the panel GEMM: three 16-lane vectors.
const NR: i64 = 48;
/// Rows per tile of the panel GEMM: 6 rows × 3 vectors (18 i32
/// accumulators, 3 weight vectors and the broadcasts in registers; the 18
/// f32 accumulators, touched once per block, spill to L1), so each panel
/// load feeds 6 rows. Measured at M = 512 (ms, 5120x25600 / 25600x5120):
/// MXFP4 4 rows 340 / 406, 5 325 / 365, 6 328 / 349, 7 337 / 348,
/// 8 374 / 428; HiF4 6 291 / 337, 7 292 / 340, 8 309 / 396.
const MR: i64 = 6;

/// Fewer rows take the row path (weights decoded in registers per row):
/// measured on 5120 x 25600 MXFP4, the row path takes 12 / 16 / 30 ms for
/// 2 / 3 / 4 rows, the panel path 23 ms for 4 (packing dominates).
const PANEL_MIN_ROWS: i64 = 4;

/// MXFP4 block pairs whose scales differ by at most 2^PAIR_MAX_SHIFT share
/// one (codes shifted left: 12 << 3 = 96 still fits i8).
const PAIR_MAX_SHIFT: i64 = 3;

/// Pairing costs packing time per panel and saves tile time per row:
/// from this many rows on. Measured on 5120x25600 MXFP4, 1 thread: M = 16
/// 29.2 ms unpaired, 35.0 paired; M = 512 332 unpaired, 319 paired.
const PAIR_MIN_ROWS: i64 = 64;

/// What the panel GEMM of one weight part needs to know.
struct PanelSpec {
    wf: Format,
    nb: i64,
    bl: i64,
    kc: i64,
    bpr: i64,
    lay: WLayout,
    /// The weights' unsigned offset (the codes' largest magnitude).
    off: u8,
    /// MXFP4 W4A4: blocks paired (see `panel_gemm`).
    pairs: bool,
    /// The strip kernel may pause once per group for a single row: always
    /// (`paced_always`, weights of [`PACE_MIN_BYTES`] or more), or when one
    /// thread runs a part of [`PACE_ALONE_MIN_BYTES`] or more alone.
    paced: bool,
    paced_always: bool,
    /// The strip kernel requests each chunk's first STRIP_PREFETCH bytes
    /// before its loop (weights of [`STRIP_HEAD_MIN_BYTES`] or more).
    head: bool,
    has_b: bool,
    has_r: bool,
    act: Option<String>,
}

/// The panel GEMM for 4-bit W4A4 with AVX-512 VNNI, panels `lo..hi` of `NR`
/// output columns: each panel's weights are decoded once into a VNNI
/// layout (per group of 4 K: 16 columns × 4 bytes per vector, offset to
/// unsigned) with its block scales, then every row tile of `MR` rows runs
/// over it: per block, `vpdpbusd` of the weight vectors with the broadcast
/// s8 activation codes into i32 accumulators started at minus the offset
/// correction, then one f32 multiply-add per accumulator with the scale
/// products.
///
/// MXFP4 (`pairs`): that f32 step (convert, scale product, multiply-add)
/// costs 3 vector ops per 8 `vpdpbusd`. Blocks 2q and 2q+1 whose E8M0
/// scales are at most 2^PAIR_MAX_SHIFT apart are put on the smaller scale by
/// shifting the other block's codes left (exact: |code| <= 96, the panel
/// offset), for the weights when the panel is packed and for the
/// activations when they are quantized (with a per row and pair flag);
/// a pair that every column of the panel and every row of the tile shares
/// runs as one 64-deep block with one f32 step, others as two blocks
/// (from `PAIR_MIN_ROWS` rows: below, packing pairs costs more than it
/// saves). The weights' shift is a row of the decode table, the
/// activations' a vector shift when they are quantized. Measured at M =
/// 512, 1 thread: 5120x25600 332 -> 319 ms, 25600x5120 352 -> 347 ms
/// (pairs taken ~99% of the time on these weights). Full row tiles then
/// read one flag per pair (their rows' AND, computed once after the
/// activations are quantized) instead of one per row, and run their pairs
/// without checks when the panel and the tile pair all of them: 319 -> 303
/// ms and 347 -> 314 ms.
///
/// Captures: weights, y, rows, n, ntot, off, bias, residual, s8 activation
/// codes, their block scales and corrections, pair flags per row and per
/// full row tile.
fn panel_gemm<'c>(
    cg: &mut Cg<'c>,
    s: &PanelSpec,
    c: &[BasicValueEnum<'c>],
    lo: IntValue<'c>,
    hi: IntValue<'c>,
) -> R<()> {
    let p = |i: usize| c[i].into_pointer_value();
    let iv = |i: usize| c[i].into_int_value();
    let (wp, yp) = (p(0), p(1));
    let (rows, nn, ntot, coff) = (iv(2), iv(3), iv(4), iv(5));
    let (bp, rp, as8, asb, acs, apf, tpf) = (p(6), p(7), p(8), p(9), p(10), p(11), p(12));
    let (nb, bl, kc) = (s.nb, s.bl, s.kc);
    let groups = bl / 4; // k4 groups per block
    let mr_max = MR;
    let kpad = nb * bl;
    let i32x16 = cg.i32t().vec_type(16);
    let f32x16 = cg.f32t().vec_type(16);
    let i8x64 = cg.i8t().vec_type(64);
    let nv = (NR / 16) as usize;
    // The panel: (kpad/4) groups × NR columns × 4 bytes; scales nb × NR.
    let pan = panel_buffer(cg, 0, kpad * NR)?;
    let psc = cg.b.build_array_alloca(
        cg.f32t(),
        cg.i32t().const_int((nb * NR) as u64, false),
        "pscales",
    )?;
    // 16 columns' codes of one block (or a pair), 64-byte aligned.
    let stage = cg.b.build_array_alloca(
        cg.i8t(),
        cg.i32t().const_int((2 * 16 * bl) as u64, false),
        "stage",
    )?;
    // Pairs: per block pair, do all the panel's columns pair (i32 0/1)?
    let npairs_max = if s.pairs { nb / 2 } else { 0 };
    let pflag = cg.b.build_array_alloca(
        cg.i32t(),
        cg.i32t().const_int(npairs_max.max(1) as u64, false),
        "pflag",
    )?;
    if let Some(i) = stage.as_instruction() {
        let _ = i.set_alignment(64);
    }
    let pall = cg.b.build_alloca(cg.cx.bool_type(), "pall")?;
    let tile = cg.b.build_array_alloca(
        cg.f32t(),
        cg.i32t().const_int((mr_max * NR) as u64, false),
        "tile",
    )?;
    let facc: Vec<PointerValue> = (0..mr_max as usize * nv)
        .map(|_| cg.b.build_alloca(f32x16, "pacc"))
        .collect::<Result<_, _>>()?;
    let iacc: Vec<PointerValue> = (0..mr_max as usize * nv)
        .map(|_| cg.b.build_alloca(i32x16, "iacc"))
        .collect::<Result<_, _>>()?;
    let offv = cg.splat_i8(s.off, bl as u32);
    let r = cg.for_range(lo, hi, |cg, pi| {
        let c0 = cg.mul(pi, cg.c64(NR))?;
        // Pack the panel, 16 columns × one block at a time: decode each
        // column's block into `stage`, then transpose its 4-byte words in
        // registers (32 K per 8 two-column vectors) into the panel's rows.
        // Pairing pays for its packing only when enough rows share it.
        let pairing = cg.icmp(IntPredicate::SGE, rows, cg.c64(PAIR_MIN_ROWS))?;
        let pairing32 = cg.b.build_int_z_extend(pairing, cg.i32t(), "")?;
        cg.for_n(cg.c64(npairs_max), |cg, q| {
            cg.store(DType::I32, pflag, q, pairing32.into())
        })?;
        // Blocks `t .. t + nblk` (1, or a pair) of 16 columns.
        let pack = |cg: &mut Cg<'c>, u: IntValue<'c>, t: IntValue<'c>, nblk: i64| -> R<()> {
            cg.for_n(cg.c64(16), |cg, cc| {
                let cc = cg.add(cg.mul(u, cg.c64(16))?, cc)?;
                let j = cg.add(c0, cc)?;
                let inside = cg.icmp(IntPredicate::SLT, j, nn)?;
                let wrow = cg.gep_bytes(
                    wp,
                    cg.mul(cg.select_i(inside, j, cg.c64(0))?, cg.c64(s.bpr))?,
                )?;
                let lane = cg.sub(cc, cg.mul(u, cg.c64(16))?)?;
                let mut dec = Vec::new();
                if nblk == 2 {
                    // Pair: both blocks on the smaller scale when their E8M0
                    // bytes are close (never a poisoned one: 255), the
                    // codes shifted by the decode table; columns past the
                    // part do not count.
                    let sb0 = cg.mxfp4_scale_byte(wrow, t)?;
                    let sb1 = cg.mxfp4_scale_byte(wrow, cg.add(t, cg.c64(1))?)?;
                    let clean = cg.and(
                        cg.icmp(IntPredicate::NE, sb0, cg.c64(255))?,
                        cg.icmp(IntPredicate::NE, sb1, cg.c64(255))?,
                    )?;
                    let (ok, sh) = cg.pair_rule(sb0, sb1, clean)?;
                    let small = cg.pow2_f64(cg.sub(cg.smin(sb0, sb1)?, cg.c64(128))?)?;
                    for (b, &shift) in sh.iter().enumerate() {
                        let tb = cg.add(t, cg.c64(b as i64))?;
                        let (v, sc) = cg.decode_codes(s.wf, wrow, tb, Some(shift))?;
                        dec.push((v, cg.select_f(ok, small, sc)?));
                    }
                    let ok = cg.b.build_or(ok, cg.b.build_not(inside, "")?, "")?;
                    let fq = cg.sdiv(t, cg.c64(2))?;
                    let f = cg.load(DType::I32, pflag, fq)?.into_int_value();
                    let okw = cg.b.build_int_z_extend(ok, cg.i32t(), "")?;
                    cg.store(DType::I32, pflag, fq, cg.b.build_and(f, okw, "")?.into())?;
                } else {
                    dec.push(cg.decode_codes(s.wf, wrow, t, None)?);
                }
                for (b, (v, sc)) in dec.into_iter().enumerate() {
                    let v = cg.b.build_int_add(v, offv, "")?;
                    let so = (b as i64) * 16 * bl;
                    cg.store_vec(stage, cg.add(cg.c64(so), cg.mul(lane, cg.c64(bl))?)?, v)?;
                    // Columns past the part: zero scales (the offset codes
                    // then cancel with the correction exactly).
                    let sc = cg.select_f(inside, cg.ftrunc(sc)?, cg.cf32(0.0))?;
                    let tb = cg.add(t, cg.c64(b as i64))?;
                    let at = cg.add(cg.mul(tb, cg.c64(NR))?, cc)?;
                    cg.store(DType::F32, psc, at, sc.into())?;
                }
                Ok(())
            })?;
            for b in 0..nblk {
                let tb = cg.add(t, cg.c64(b))?;
                let stage_b = cg.gep_bytes(stage, cg.c64(b * 16 * bl))?;
                let i32x8 = cg.i32t().vec_type(8);
                for h in 0..bl / 32 {
                    // X_p: columns 2p and 2p+1, 8 words each.
                    let xs: Vec<VectorValue> = (0..8)
                        .map(|p| {
                            let lo =
                                cg.load_vec(stage_b, cg.c64(2 * p * bl + 32 * h), i32x8, 32)?;
                            let hi =
                                cg.load_vec(stage_b, cg.c64((2 * p + 1) * bl + 32 * h), i32x8, 32)?;
                            let m: Vec<_> =
                                (0..16).map(|i| cg.i32t().const_int(i, false)).collect();
                            Ok(cg.b.build_shuffle_vector(
                                lo,
                                hi,
                                VectorType::const_vector(&m),
                                "",
                            )?)
                        })
                        .collect::<R<_>>()?;
                    let labels: Vec<Vec<u32>> = (0..8u32)
                        .map(|p| (0..16u32).map(|i| (2 * p + i / 8) * 8 + i % 8).collect())
                        .collect();
                    let want: Vec<Vec<u32>> = (0..8u32)
                        .map(|g| (0..16u32).map(|c| c * 8 + g).collect())
                        .collect();
                    let ws = shuffle_transpose(cg, xs, labels, &want)?;
                    let row0 = cg.add(cg.mul(tb, cg.c64(groups))?, cg.c64(8 * h))?;
                    store_panel_rows(cg, pan, ws, row0, NR, u)?;
                }
            }
            Ok(())
        };
        let packed = match s.lay {
            WLayout::Cpu { k } => {
                let dst = PanelDst { pan, psc, pflag };
                pack_cpu_panel(cg, s, k, wp, nn, c0, dst, pairing)?;
                true
            }
            _ => false,
        };
        cg.for_n(cg.c64(if packed { 0 } else { NR / 16 }), |cg, u| {
            if !s.pairs {
                return cg.for_n(cg.c64(nb), |cg, t| pack(cg, u, t, 1));
            }
            cg.if_then(pairing, |cg| {
                cg.for_n(cg.c64(nb / 2), |cg, q| {
                    let t = cg.mul(q, cg.c64(2))?;
                    pack(cg, u, t, 2)
                })?;
                if nb % 2 == 1 {
                    pack(cg, u, cg.c64(nb - 1), 1)?;
                }
                Ok(())
            })?;
            let single = cg.b.build_not(pairing, "")?;
            cg.if_then(single, |cg| cg.for_n(cg.c64(nb), |cg, t| pack(cg, u, t, 1)))
        })?;
        let ncols = cg.smin(cg.c64(NR), cg.sub(nn, c0)?)?;
        // Does every column of the panel pair every block pair?
        cg.b.build_store(pall, cg.cx.bool_type().const_int(1, false))?;
        cg.for_n(cg.c64(npairs_max), |cg, q| {
            let f = cg.load(DType::I32, pflag, q)?.into_int_value();
            let ok = cg.icmp(IntPredicate::NE, f, cg.i32t().const_zero())?;
            let a =
                cg.b.build_load(cg.cx.bool_type(), pall, "")?
                    .into_int_value();
            cg.b.build_store(pall, cg.and(a, ok)?)?;
            Ok(())
        })?;
        let run = |cg: &mut Cg<'c>, r0: IntValue<'c>, mr: usize| -> R<()> {
            for a in &facc[..mr * nv] {
                cg.b.build_store(*a, f32x16.const_zero())?;
            }
            // Blocks `t .. t + nblk` (one, or a pair on one scale) into the
            // i32 accumulators, then once into the f32 ones.
            let body = |cg: &mut Cg<'c>, t: IntValue<'c>, nblk: i64| -> R<()> {
                for r in 0..mr {
                    let ri = cg.add(r0, cg.c64(r as i64))?;
                    let at = cg.add(cg.mul(ri, cg.c64(nb))?, t)?;
                    let mut cs = cg.load(DType::I32, acs, at)?.into_int_value();
                    for b in 1..nblk {
                        let next = cg.load(DType::I32, acs, cg.add(at, cg.c64(b))?)?;
                        cs = cg.b.build_int_add(cs, next.into_int_value(), "")?;
                    }
                    // Stored negated: a broadcast straight from memory.
                    let v = cg.splat_i32(cs, 16)?;
                    for u in 0..nv {
                        cg.b.build_store(iacc[r * nv + u], v)?;
                    }
                }
                for g in 0..nblk * groups {
                    let gi = cg.add(cg.mul(t, cg.c64(groups))?, cg.c64(g))?;
                    let base = cg.mul(gi, cg.c64(NR * 4))?;
                    let wv: Vec<VectorValue> = (0..nv)
                        .map(|u| cg.load_vec(pan, cg.add(base, cg.c64(64 * u as i64))?, i8x64, 64))
                        .collect::<R<_>>()?;
                    for r in 0..mr {
                        let ri = cg.add(r0, cg.c64(r as i64))?;
                        let ko = cg.add(cg.mul(t, cg.c64(bl))?, cg.c64(4 * g))?;
                        let ao = cg.add(cg.mul(ri, cg.c64(kc))?, ko)?;
                        let word = cg.load_vec(as8, ao, cg.i32t().vec_type(1), 1)?;
                        let z = VectorType::const_vector(&[cg.i32t().const_zero(); 16]);
                        let sp = cg.b.build_shuffle_vector(word, word, z, "")?;
                        let av = cg.b.build_bit_cast(sp, i8x64, "")?.into_vector_value();
                        for (u, w) in wv.iter().enumerate() {
                            let acc = iacc[r * nv + u];
                            let a = cg.b.build_load(i32x16, acc, "")?.into_vector_value();
                            let d = cg.vpdpbusd(a, *w, av)?;
                            cg.b.build_store(acc, d)?;
                        }
                    }
                }
                let sw: Vec<VectorValue> = (0..nv)
                    .map(|u| {
                        let o = cg.mul(
                            cg.add(cg.mul(t, cg.c64(NR))?, cg.c64(16 * u as i64))?,
                            cg.c64(4),
                        )?;
                        cg.load_vec(psc, o, f32x16, 4)
                    })
                    .collect::<R<_>>()?;
                for r in 0..mr {
                    let ri = cg.add(r0, cg.c64(r as i64))?;
                    let sa = cg
                        .load(DType::F32, asb, cg.add(cg.mul(ri, cg.c64(nb))?, t)?)?
                        .into_float_value();
                    let sav = cg.splat_f32(sa, 16)?;
                    for u in 0..nv {
                        let d =
                            cg.b.build_load(i32x16, iacc[r * nv + u], "")?
                                .into_vector_value();
                        let fd = cg.b.build_signed_int_to_float(d, f32x16, "")?;
                        let sc = cg.b.build_float_mul(sw[u], sav, "")?;
                        let fa = facc[r * nv + u];
                        let a = cg.b.build_load(f32x16, fa, "")?.into_vector_value();
                        cg.b.build_store(fa, cg.fma_vec(fd, sc, a)?)?;
                    }
                }
                Ok(())
            };
            if !s.pairs {
                cg.for_n(cg.c64(nb), |cg, t| body(cg, t, 1))?;
            } else {
                // A pair runs as one block when every column of the panel
                // and every row of the tile pairs it: full tiles read their
                // rows' AND (one flag), and when the panel and the tile pair
                // every block pair, the pairs run without checks.
                let np = nb / 2;
                let trow = if mr as i64 == MR {
                    Some(cg.gep_bytes(tpf, cg.mul(cg.sdiv(r0, cg.c64(MR))?, cg.c64(np + 1))?)?)
                } else {
                    None
                };
                let checked = |cg: &mut Cg<'c>| {
                    cg.for_n(cg.c64(np), |cg, q| {
                        let t = cg.mul(q, cg.c64(2))?;
                        let f = cg.load(DType::I32, pflag, q)?.into_int_value();
                        let mut ok = cg.icmp(IntPredicate::NE, f, cg.i32t().const_zero())?;
                        let rows_ok = |cg: &Cg<'c>, fr: IntValue<'c>| {
                            cg.icmp(IntPredicate::NE, fr, cg.i8t().const_zero())
                        };
                        match trow {
                            Some(tr) => ok = cg.and(ok, rows_ok(cg, cg.load_u8(tr, q)?)?)?,
                            None => {
                                for r in 0..mr {
                                    let ri = cg.add(r0, cg.c64(r as i64))?;
                                    let at = cg.add(cg.mul(ri, cg.c64(np))?, q)?;
                                    ok = cg.and(ok, rows_ok(cg, cg.load_u8(apf, at)?)?)?;
                                }
                            }
                        }
                        cg.if_then(ok, |cg| body(cg, t, 2))?;
                        let apart = cg.b.build_not(ok, "")?;
                        cg.if_then(apart, |cg| {
                            cg.for_n(cg.c64(2), |cg, h| body(cg, cg.add(t, h)?, 1))
                        })
                    })
                };
                match trow {
                    Some(tr) => {
                        let tall = cg.load_u8(tr, cg.c64(np))?;
                        let tall = cg.icmp(IntPredicate::NE, tall, cg.i8t().const_zero())?;
                        let fast = cg.and(
                            tall,
                            cg.b.build_load(cg.cx.bool_type(), pall, "")?
                                .into_int_value(),
                        )?;
                        cg.if_then(fast, |cg| {
                            cg.for_n(cg.c64(np), |cg, q| body(cg, cg.mul(q, cg.c64(2))?, 2))
                        })?;
                        let slow = cg.b.build_not(fast, "")?;
                        cg.if_then(slow, checked)?;
                    }
                    None => checked(cg)?,
                }
                if nb % 2 == 1 {
                    body(cg, cg.c64(nb - 1), 1)?;
                }
            }
            let epi = Epilogue {
                y: yp,
                ntot,
                coff,
                bias: s.has_b.then_some(bp),
                residual: s.has_r.then_some(rp),
                act: s.act.as_deref(),
                exps: None,
            };
            write_tile(cg, &epi, &facc[..mr * nv], tile, NR, (r0, c0, ncols))
        };
        for_row_tiles(cg, rows, mr_max, run)
    });
    r
}

/// Where `pack_cpu_panel` writes: the panel's codes, its f32 block scales
/// (`nb × NR`) and its MXFP4 pair flags (i32 per block pair, ANDed).
struct PanelDst<'c> {
    pan: PointerValue<'c>,
    psc: PointerValue<'c>,
    pflag: PointerValue<'c>,
}

/// The table index bits above the nibble in `pack_cpu_panel`, for one half
/// of a 128-K group (64 K: 16 K-groups).
enum IndexBits<'c> {
    /// MXFP4: per block of the half (8 K-groups each), the lanes' pair
    /// shifts times 16 in every byte (none: unpaired).
    PairShifts([Option<VectorValue<'c>>; 2]),
    /// HiF4: the unit's header dwords of the 16 columns.
    Hif4Header(VectorValue<'c>),
}

impl<'c> IndexBits<'c> {
    /// The bits for K-group `j` (0..16) of the half.
    fn bits(&self, cg: &Cg<'c>, j: usize) -> R<Option<VectorValue<'c>>> {
        let hd8 = match self {
            IndexBits::PairShifts(sh) => return Ok(sh[j / 8]),
            IndexBits::Hif4Header(hd8) => *hd8,
        };
        // Lane c's field of K-group pair j/2 starts at bit 8 + 3(j/2) of
        // its dword (dword c%2 of the qword): moved to bits 4-6 of each
        // byte, one `vpmultishiftqb` for both K-groups of the pair (the
        // same operation twice: LLVM computes it once).
        let at = 8 + 3 * (j / 2);
        let ctrl: Vec<_> = (0..64)
            .map(|i| {
                let c = i / 4;
                cg.i8t().const_int((32 * (c % 2) + at - 4) as u64, false)
            })
            .collect();
        // Bit 7 is the next field's: the lookup ignores it.
        Ok(Some(
            cg.intrinsic(
                "llvm.x86.avx512.pmultishift.qb.512",
                &[],
                &[VectorType::const_vector(&ctrl).into(), hd8.into()],
            )?
            .into_vector_value(),
        ))
    }
}

/// The 64 code bytes `v` with their low (`h = 0`) or high nibbles in bits
/// 0-3 (the high ones by one 16-bit shift: bits 4-7 are then the next
/// byte's).
fn nibbles<'c>(cg: &Cg<'c>, v: VectorValue<'c>, h: usize) -> R<VectorValue<'c>> {
    if h == 0 {
        return Ok(v);
    }
    let i16x32 = cg.cx.i16_type().vec_type(32);
    let w = cg.b.build_bit_cast(v, i16x32, "")?.into_vector_value();
    let four = VectorType::const_vector(&[cg.cx.i16_type().const_int(4, false); 32]);
    let w = cg.b.build_right_shift(w, four, false, "")?;
    Ok(cg
        .b
        .build_bit_cast(w, v.get_type(), "")?
        .into_vector_value())
}

/// The lookup index of the low (`h = 0`) or high nibbles of the 64 code
/// bytes `v`: the nibble in bits 0-3, bits 4-7 from `x` (whatever it has
/// below: one `vpternlogd` merges them), or zero.
fn nibble_index<'c>(
    cg: &Cg<'c>,
    v: VectorValue<'c>,
    h: usize,
    x: Option<VectorValue<'c>>,
) -> R<VectorValue<'c>> {
    let nib = nibbles(cg, v, h)?;
    let Some(x) = x else {
        return Ok(cg.b.build_and(nib, cg.splat_i8(15, 64), "")?);
    };
    // (nib & !0xF0) | (x & 0xF0): the truth table of a, b, c = 0xF0, 0xCC,
    // 0xAA.
    let i32x16 = cg.i32t().vec_type(16);
    let d = |v: VectorValue<'c>| cg.b.build_bit_cast(v, i32x16, "");
    let r = cg.intrinsic(
        "llvm.x86.avx512.pternlog.d.512",
        &[],
        &[
            d(nib)?.into(),
            d(x)?.into(),
            cg.splat_i32c(0xF0F0_F0F0, 16).into(),
            cg.i32t().const_int(0xD8, false).into(),
        ],
    )?;
    Ok(cg
        .b
        .build_bit_cast(r, v.get_type(), "")?
        .into_vector_value())
}

/// Packs panel `c0 .. c0 + NR` of 4-bit weights in the CPU layout (`k`
/// elements per row, strips of 16 columns), a group of 128 K of a strip at
/// a time: its 16 vectors are each a K-group of 4 across the 16 columns in
/// the low nibbles (elements 0-63 of the group) and in the high ones
/// (64-127), so one AND or shift and one table lookup per vector give the
/// panel's offset codes, the lookup's index also carrying the lane's left
/// shift in bits 4-6: MXFP4 `vpermb` (the pair shift, 0 to 3; 0 when
/// blocks do not pair), HiF4 `vpermi2b` (the K-group pair's 3-bit
/// micro-exponent field of the unit's header, moved there by one
/// `vpmultishiftqb` per pair; the K-group's table sums its bits). The 16
/// columns' headers are one vector, so scales and pair decisions are vector
/// operations too.
/// About 3 vector operations per 64 codes (the row-major layout before it
/// needed a 16 × 16 transpose: about 8), against about 25 for decoding one
/// column and block at a time; it decides how fast few rows run (M = 4 to
/// 64).
#[allow(clippy::too_many_arguments)]
fn pack_cpu_panel<'c>(
    cg: &mut Cg<'c>,
    s: &PanelSpec,
    k: i64,
    wp: PointerValue<'c>,
    nn: IntValue<'c>,
    c0: IntValue<'c>,
    dst: PanelDst<'c>,
    pairing: IntValue<'c>,
) -> R<()> {
    let PanelDst { pan, psc, pflag } = dst;
    let mx = matches!(s.wf, Format::Mxfp4(_));
    let i8x64 = cg.i8t().vec_type(64);
    let i32x16 = cg.i32t().vec_type(16);
    let f32x16 = cg.f32t().vec_type(16);
    // Constants from the context alone (the closures below borrow no `cg`).
    let cx = cg.cx;
    let i32c = move |v: u64| cx.i32_type().const_int(v, false);
    let i32v = move |f: &dyn Fn(u64) -> u64| -> VectorValue<'c> {
        VectorType::const_vector(&(0..16).map(|l| i32c(f(l))).collect::<Vec<_>>())
    };
    let tabs = NibbleTables::new(cg, s.wf, s.off, true);
    let strip = layout::STRIP as i64;
    let nstrips = cg.sdiv(nn, cg.c64(strip))?;
    let iota = i32v(&|l| l);
    let body = |cg: &mut Cg<'c>, paired: bool| -> R<()> {
        cg.for_n(cg.c64(NR / 16), |cg, u| {
            let cu = cg.add(c0, cg.mul(u, cg.c64(16))?)?;
            // Strips past the part read strip 0 and get zero scales (their
            // offset codes cancel with the correction exactly).
            let si = cg.add(cg.sdiv(c0, cg.c64(strip))?, u)?;
            let si = cg.select_i(cg.icmp(IntPredicate::SLT, si, nstrips)?, si, cg.c64(0))?;
            let sp = cg.gep_bytes(wp, cg.mul(si, cg.c64(strip * s.bpr))?)?;
            let hdr = cg.gep_bytes(sp, cg.c64(strip * k / 2))?;
            let cu32 = cg.b.build_int_truncate(cu, cg.i32t(), "")?;
            let nn32 = cg.b.build_int_truncate(nn, cg.i32t(), "")?;
            let lanes = cg.b.build_int_add(cg.splat_i32(cu32, 16)?, iota, "")?;
            let inside =
                cg.b.build_int_compare(IntPredicate::SLT, lanes, cg.splat_i32(nn32, 16)?, "")?;
            cg.for_n(cg.c64(k / layout::GROUP as i64), |cg, g| {
                // The next strip (contiguous) is requested while this one
                // is packed, 17 lines per step.
                let ahead = cg.add(cg.mul(g, cg.c64(64 * 16))?, cg.c64(strip * s.bpr))?;
                for c in 0..16 {
                    cg.prefetch(
                        cg.gep_bytes_ahead(sp, cg.add(ahead, cg.c64(64 * c))?)?,
                        false,
                    )?;
                }
                let hpg = if mx { 64 } else { 128 };
                let hat = cg.add(cg.mul(g, cg.c64(hpg))?, cg.c64(strip * s.bpr))?;
                cg.prefetch(cg.gep_bytes_ahead(hdr, hat)?, false)?;
                let store_scale = |cg: &Cg<'c>, t: IntValue<'c>, f: VectorValue<'c>| {
                    let f =
                        cg.b.build_select(inside, f, f32x16.const_zero(), "")?
                            .into_vector_value();
                    let at = cg.mul(
                        cg.add(cg.mul(t, cg.c64(NR))?, cg.mul(u, cg.c64(16))?)?,
                        cg.c64(4),
                    )?;
                    cg.store_vec_aligned(psc, at, f, 4)
                };
                // Per half h (units 2g+h, or blocks 4g+2h and 4g+2h+1): the
                // index bits above the nibble, per K-group j of the half.
                let mut extra: Vec<IndexBits> = Vec::new();
                if mx {
                    let d = cg.load_vec(hdr, cg.mul(g, cg.c64(64))?, i32x16, 1)?;
                    let e: Vec<VectorValue> = (0..4)
                        .map(|b| {
                            let x = cg.b.build_right_shift(d, i32v(&|_| 8 * b), false, "")?;
                            Ok(cg.b.build_and(x, i32v(&|_| 255), "")?)
                        })
                        .collect::<R<_>>()?;
                    let mut shifts: Vec<Option<VectorValue>> = vec![None; 4];
                    let mut sc = e.clone();
                    if paired {
                        for h in 0..2 {
                            let (e0, e1) = (e[2 * h], e[2 * h + 1]);
                            let dd = cg.b.build_int_sub(e1, e0, "")?;
                            let lo = cg.b.build_int_compare(
                                IntPredicate::SGE,
                                dd,
                                i32v(&|_| (-PAIR_MAX_SHIFT) as u64),
                                "",
                            )?;
                            let hi = cg.b.build_int_compare(
                                IntPredicate::SLE,
                                dd,
                                i32v(&|_| PAIR_MAX_SHIFT as u64),
                                "",
                            )?;
                            let ok = cg.b.build_and(lo, hi, "")?;
                            let zero = i32x16.const_zero();
                            let nd = cg.b.build_int_sub(zero, dd, "")?;
                            let pos = |v: VectorValue<'c>| -> R<VectorValue<'c>> {
                                let p = cg.b.build_int_compare(IntPredicate::SGT, v, zero, "")?;
                                let v = cg.b.build_select(p, v, zero, "")?.into_vector_value();
                                Ok(cg.b.build_select(ok, v, zero, "")?.into_vector_value())
                            };
                            let small = cg.b.build_int_compare(IntPredicate::SLT, e0, e1, "")?;
                            let sm = cg.b.build_select(small, e0, e1, "")?.into_vector_value();
                            for (b, sh) in [(2 * h, pos(nd)?), (2 * h + 1, pos(dd)?)] {
                                let rep = cg.b.build_int_mul(sh, i32v(&|_| 0x1010_1010), "")?;
                                shifts[b] =
                                    Some(cg.b.build_bit_cast(rep, i8x64, "")?.into_vector_value());
                                sc[b] = cg.b.build_select(ok, sm, e[b], "")?.into_vector_value();
                            }
                            // The pair flag: every column of the part pairs.
                            let out = cg.b.build_not(inside, "")?;
                            let all = cg.b.build_or(ok, out, "")?;
                            let all = cg
                                .intrinsic(
                                    "llvm.vector.reduce.and",
                                    &[all.get_type().into()],
                                    &[all.into()],
                                )?
                                .into_int_value();
                            let q = cg.add(cg.mul(g, cg.c64(2))?, cg.c64(h as i64))?;
                            let f = cg.load(DType::I32, pflag, q)?.into_int_value();
                            let all = cg.b.build_int_z_extend(all, cg.i32t(), "")?;
                            cg.store(DType::I32, pflag, q, cg.b.build_and(f, all, "")?.into())?;
                        }
                    }
                    for (b, e) in sc.into_iter().enumerate() {
                        // E8M0 minus one, shifted into the exponent: 2^(s-128).
                        let bits = cg.b.build_left_shift(e, i32v(&|_| 23), "")?;
                        let f = cg.b.build_bit_cast(bits, f32x16, "")?.into_vector_value();
                        store_scale(cg, cg.add(cg.mul(g, cg.c64(4))?, cg.c64(b as i64))?, f)?;
                    }
                    for h in 0..2 {
                        extra.push(IndexBits::PairShifts([shifts[2 * h], shifts[2 * h + 1]]));
                    }
                } else {
                    for h in 0..2i64 {
                        let t = cg.add(cg.mul(g, cg.c64(2))?, cg.c64(h))?;
                        let hd = cg.load_vec(hdr, cg.mul(t, cg.c64(64))?, i32x16, 1)?;
                        store_scale(cg, t, hif4_scales(cg, hd)?)?;
                        let hd8 = cg.b.build_bit_cast(hd, i8x64, "")?.into_vector_value();
                        extra.push(IndexBits::Hif4Header(hd8));
                    }
                }
                for (h, extra) in extra.iter().enumerate() {
                    let ws: Vec<VectorValue> = (0..16)
                        .map(|j| {
                            let at = cg.add(cg.mul(g, cg.c64(1024))?, cg.c64(64 * j as i64))?;
                            let v = cg.load_vec(sp, at, i8x64, 1)?;
                            let idx = nibble_index(cg, v, h, extra.bits(cg, j)?)?;
                            let w = tabs.lookup(cg, idx, j)?;
                            Ok(cg.b.build_bit_cast(w, i32x16, "")?.into_vector_value())
                        })
                        .collect::<R<_>>()?;
                    let row0 = cg.add(cg.mul(g, cg.c64(32))?, cg.c64(16 * h as i64))?;
                    store_panel_rows(cg, pan, ws, row0, NR, u)?;
                }
                Ok(())
            })
        })
    };
    if !s.pairs {
        return body(cg, false);
    }
    cg.if_then(pairing, |cg| body(cg, true))?;
    let single = cg.b.build_not(pairing, "")?;
    cg.if_then(single, |cg| body(cg, false))
}

/// Rearranges `xs` (vectors of 16 i32 lanes, a power of two of them, lane
/// `i` of vector `v` holding the element `labels[v][i]`) so that lane `i`
/// of output vector `v` holds `want[v][i]`, with two-source shuffles
/// (`vpermt2d`): stages that each exchange one bit of the vector index with
/// the same bit of the lane index, the last one with any lane order. The
/// masks are found at code-generation time by following the labels; a
/// `want` that the stages cannot reach is an error.
fn shuffle_transpose<'c>(
    cg: &Cg<'c>,
    mut xs: Vec<VectorValue<'c>>,
    mut labels: Vec<Vec<u32>>,
    want: &[Vec<u32>],
) -> R<Vec<VectorValue<'c>>> {
    let n = xs.len();
    let bits = n.trailing_zeros() as usize;
    let mask = |m: &[u32]| {
        let v: Vec<_> = m
            .iter()
            .map(|&i| cg.i32t().const_int(i as u64, false))
            .collect();
        VectorType::const_vector(&v)
    };
    for b in 0..bits.saturating_sub(1) {
        let mut nx = Vec::with_capacity(n);
        let mut nl = Vec::with_capacity(n);
        for v in 0..n {
            let beta = (v >> b) & 1;
            let (a, c) = (v & !(1 << b), v | (1 << b));
            let m: Vec<u32> = (0..16u32)
                .map(|i| {
                    let lambda = (i >> b) & 1;
                    let src = (i & !(1 << b)) | ((beta as u32) << b);
                    src + 16 * lambda
                })
                .collect();
            let l: Vec<u32> = m
                .iter()
                .map(|&x| labels[if x >= 16 { c } else { a }][(x % 16) as usize])
                .collect();
            nx.push(cg.b.build_shuffle_vector(xs[a], xs[c], mask(&m), "")?);
            nl.push(l);
        }
        xs = nx;
        labels = nl;
    }
    want.iter()
        .map(|w| {
            let find = |e: u32| {
                (0..n).find_map(|v| labels[v].iter().position(|&x| x == e).map(|i| (v, i)))
            };
            let at: Vec<(usize, usize)> = w
                .iter()
                .map(|&e| {
                    find(e)
                        .ok_or_else(|| CgError::Graph(format!("transpose: element {e} is missing")))
                })
                .collect::<R<_>>()?;
            let mut srcs: Vec<usize> = at.iter().map(|a| a.0).collect();
            srcs.sort_unstable();
            srcs.dedup();
            if srcs.len() > 2 {
                return Err(CgError::Graph(format!(
                    "transpose: an output needs {} sources",
                    srcs.len()
                )));
            }
            let (Some(&a), Some(&c)) = (srcs.first(), srcs.last()) else {
                return Err(CgError::Graph("transpose: an empty output".into()));
            };
            let m: Vec<u32> = at
                .iter()
                .map(|&(v, i)| i as u32 + if v == a { 0 } else { 16 })
                .collect();
            Ok(cg.b.build_shuffle_vector(xs[a], xs[c], mask(&m), "")?)
        })
        .collect()
}

/// Columns per panel of the f32 panel GEMM (two 16-lane vectors) and rows
/// per tile (12 × 2 accumulators, 2 weight vectors, broadcasts: 27 zmm;
/// M = 512, 5120x25600 / 25600x5120, f32 FMAs: 6 rows 902 / 1037 ms, 8 rows
/// 881 / 1027, 12 rows 869 / 1008; bf16 pairs, 12 rows: 652 / 715 ms, 88 /
/// 80% of the `vdpbf16ps` peak).
const NR_F32: i64 = 32;
const MR_F32: i64 = 12;
/// K elements per slice of the f32 panel GEMM (a multiple of 64): 1 MB of
/// panel, which the 2 MB L2 keeps while every row tile passes.
const F32_K_SLICE: i64 = 8192;
/// Fewer rows take HiF8's row path: on 5120 x 25600 it takes about 30 ms
/// per 4 rows, the f32 panel path 43 ms for 4 rows and 67 ms for 16.
const F32_PANEL_MIN_ROWS: i64 = 8;

/// HiF8 rows against CPU-layout weights in bf16 pairs take the row path
/// below this many rows (`cpu_row_dot_hif8`, two rows per decoded vector),
/// the bf16 panel GEMM from there. Measured on 5120x5120, 1 thread, cold
/// caches (ms, rows / panels): M = 8 4.16 / 6.34, 12 6.11 / 7.36, 16 8.14
/// / 8.28, 24 12.2 / 10.5. Weights under `HIF8_ROWS_MIN_BYTES`, read from
/// cache, go to the panels from `F32_PANEL_MIN_ROWS` rows: M = 12 against
/// 128x512 runs 23 µs there, 26-37 µs in rows (warm caches).
const HIF8_CPU_PANEL_MIN_ROWS: i64 = 16;
/// Weight bytes from which `HIF8_CPU_PANEL_MIN_ROWS` applies.
const HIF8_ROWS_MIN_BYTES: u64 = 1 << 20;
/// Largest f32 panel (K × NR_F32 floats): beyond it (K > 32768) the row
/// path, which needs no panel.
const F32_PANEL_MAX_BYTES: i64 = 4 << 20;

/// What the f32 panel GEMM (HiF8) of one weight part needs to know.
struct F32PanelSpec {
    k: i64,
    lay: WLayout,
    /// K padded to 64 (the rows of the decoded activations).
    k16: i64,
    bpr: i64,
    /// Panel and activations in bf16 pairs, multiplied with `vdpbf16ps`.
    bf16: bool,
    ascaled: bool,
    wscaled: bool,
    has_b: bool,
    has_r: bool,
    act: Option<String>,
}

/// The panel GEMM for W8A8 HiF8, panels `lo..hi` of `NR_F32` columns: each
/// panel's weights decoded once to exact f32 values laid out K-major (one
/// row of `NR_F32` columns per K), then every tile of `MR_F32` rows runs
/// f32 multiply-adds of broadcast activations (exact decodes) with the
/// weight vectors; the rows' powers of two (scaled HiF8), bias, activation
/// and residual in the epilogue. With `bf16` (AVX-512 BF16) the panel's rows
/// hold pairs of K (each lane two bf16, the even K low) and every tile runs
/// `vdpbf16ps` of broadcast activation pairs: HiF8 values are exact in bf16
/// and their products in f32, so only the order of the f32 sums changes.
/// Captures: weights, y, rows, n, ntot, off, bias, residual, decoded
/// activations (f32, or bf16 with `bf16`), activation and weight exponents.
fn f32_panel_gemm<'c>(
    cg: &mut Cg<'c>,
    s: &F32PanelSpec,
    c: &[BasicValueEnum<'c>],
    lo: IntValue<'c>,
    hi: IntValue<'c>,
) -> R<()> {
    let p = |i: usize| c[i].into_pointer_value();
    let iv = |i: usize| c[i].into_int_value();
    let (wp, yp) = (p(0), p(1));
    let (rows, nn, ntot, coff) = (iv(2), iv(3), iv(4), iv(5));
    let (bp, rp, adec, eap, ewp) = (p(6), p(7), p(8), p(9), p(10));
    let k16 = s.k16;
    let f32x16 = cg.f32t().vec_type(16);
    let nv = (NR_F32 / 16) as usize;
    let pan = panel_buffer(cg, 0, k16 * NR_F32 * if s.bf16 { 2 } else { 4 })?;
    let nkb = (k16 + F32_K_SLICE - 1) / F32_K_SLICE;
    let pacc = if nkb > 1 {
        panel_buffer_n(cg, 1, cg.mul(rows, cg.c64(NR_F32 * 4))?)?
    } else {
        cg.ptrt().const_null()
    };
    let col = cg.b.build_array_alloca(
        cg.f32t(),
        cg.i32t().const_int(k16.max(16 * 64) as u64, false),
        "fcol",
    )?;
    if let Some(i) = col.as_instruction() {
        let _ = i.set_alignment(64);
    }
    // The in-register decode needs whole 64-code chunks (the CPU layout).
    let dec = (matches!(s.lay, WLayout::Cpu { .. }) && s.k % 64 == 0 && s.k == k16)
        .then(|| Hif8Decoder::new(cg));
    let tile = cg.b.build_array_alloca(
        cg.f32t(),
        cg.i32t().const_int((MR_F32 * NR_F32) as u64, false),
        "ftile",
    )?;
    let facc: Vec<PointerValue> = (0..MR_F32 as usize * nv)
        .map(|_| cg.b.build_alloca(f32x16, "facc"))
        .collect::<Result<_, _>>()?;
    let r = cg.for_range(lo, hi, |cg, pi| {
        let c0 = cg.mul(pi, cg.c64(NR_F32))?;
        if let (WLayout::Cpu { .. }, Some(dec)) = (s.lay, &dec) {
            // The CPU layout: per 16 columns and 64 K, decode in registers
            // into `col` (16 × 64 f32), then transpose 16 × 16 blocks in
            // registers into the panel's K rows.
            cg.for_n(cg.c64(NR_F32 / 16), |cg, u| {
                cg.for_n(cg.c64(s.k / 64), |cg, g| {
                    cg.for_n(cg.c64(16), |cg, cc| {
                        let j = cg.add(c0, cg.add(cg.mul(u, cg.c64(16))?, cc)?)?;
                        let inside = cg.icmp(IntPredicate::SLT, j, nn)?;
                        let jj = cg.select_i(inside, j, cg.c64(0))?;
                        let wrow = cg.gep_bytes(wp, cg.mul(jj, cg.c64(s.bpr))?)?;
                        let code = cg.load_i8xn(wrow, cg.mul(g, cg.c64(64))?, 64)?;
                        for (q, v) in dec.decode(cg, code)?.into_iter().enumerate() {
                            // Columns past the part: zeros.
                            let v = cg.b.build_select(inside, v, f32x16.const_zero(), "")?;
                            let at = cg.mul(
                                cg.add(cg.mul(cc, cg.c64(64))?, cg.c64(16 * q as i64))?,
                                cg.c64(4),
                            )?;
                            cg.store_vec_aligned(col, at, v.into_vector_value(), 64)?;
                        }
                        Ok(())
                    })?;
                    for q in 0..4i64 {
                        let xs: Vec<VectorValue> = (0..16)
                            .map(|c| cg.load_vec(col, cg.c64(4 * (64 * c + 16 * q)), f32x16, 64))
                            .collect::<R<_>>()?;
                        let labels: Vec<Vec<u32>> = (0..16u32)
                            .map(|c| (0..16u32).map(|i| c * 16 + i).collect())
                            .collect();
                        let want: Vec<Vec<u32>> = (0..16u32)
                            .map(|kk| (0..16u32).map(|c| c * 16 + kk).collect())
                            .collect();
                        let ws = shuffle_transpose(cg, xs, labels, &want)?;
                        let row0 = cg.add(cg.mul(g, cg.c64(64))?, cg.c64(16 * q))?;
                        if s.bf16 {
                            // Rows 2i and 2i + 1 into one row of pairs: the
                            // top halves (the exact bf16), the even K low.
                            let i32x16 = cg.i32t().vec_type(16);
                            let (sh, top) = (cg.splat_i32c(16, 16), cg.splat_i32c(0xffff_0000, 16));
                            let ps = ws
                                .chunks(2)
                                .map(|w2| -> R<VectorValue<'c>> {
                                    let e =
                                        cg.b.build_bit_cast(w2[0], i32x16, "")?.into_vector_value();
                                    let o =
                                        cg.b.build_bit_cast(w2[1], i32x16, "")?.into_vector_value();
                                    let e = cg.b.build_right_shift(e, sh, false, "")?;
                                    let o = cg.b.build_and(o, top, "")?;
                                    Ok(cg.b.build_or(e, o, "")?)
                                })
                                .collect::<R<Vec<_>>>()?;
                            let prow0 = cg.add(cg.mul(g, cg.c64(32))?, cg.c64(8 * q))?;
                            store_panel_rows(cg, pan, ps, prow0, NR_F32, u)?;
                        } else {
                            store_panel_rows(cg, pan, ws, row0, NR_F32, u)?;
                        }
                    }
                    Ok(())
                })
            })?;
        } else {
            cg.for_n(cg.c64(NR_F32), |cg, cc| {
                let j = cg.add(c0, cc)?;
                let inside = cg.icmp(IntPredicate::SLT, j, nn)?;
                let jj = cg.select_i(inside, j, cg.c64(0))?;
                let wrow = cg.gep_bytes(wp, cg.mul(jj, cg.c64(s.bpr))?)?;
                cg.hif8_decode_row(wrow, s.lay, s.k, k16, col)?;
                // Columns past the part: zeros.
                cg.for_n(cg.c64(k16), |cg, kq| {
                    let v = cg.load_f32(col, kq)?;
                    let v = cg.select_f(inside, v, cg.cf32(0.0))?;
                    if !s.bf16 {
                        let at = cg.add(cg.mul(kq, cg.c64(NR_F32))?, cc)?;
                        return cg.store(DType::F32, pan, at, v.into());
                    }
                    // Pair row kq / 2, the even K in the low half.
                    let bits = cg.b.build_bit_cast(v, cg.i32t(), "")?.into_int_value();
                    let hi =
                        cg.b.build_right_shift(bits, cg.i32t().const_int(16, false), false, "")?;
                    let h = cg.b.build_int_truncate(hi, cg.cx.i16_type(), "")?;
                    let pr = cg.b.build_right_shift(kq, cg.c64(1), false, "")?;
                    let lane = cg.add(cg.mul(pr, cg.c64(NR_F32))?, cc)?;
                    let half = cg.b.build_and(kq, cg.c64(1), "")?;
                    let at = cg.add(cg.mul(lane, cg.c64(4))?, cg.mul(half, cg.c64(2))?)?;
                    let q = cg.gep_bytes(pan, at)?;
                    cg.b.build_store(q, h)?;
                    Ok(())
                })
            })?;
        }
        let ncols = cg.smin(cg.c64(NR_F32), cg.sub(nn, c0)?)?;
        // K in slices of F32_K_SLICE (the panel's slice stays in L2 while
        // every row tile passes); a tile's sums wait in `pacc` between
        // slices.
        let run = |cg: &mut Cg<'c>, r0: IntValue<'c>, mr: usize, kb: IntValue<'c>| -> R<()> {
            let first = cg.icmp(IntPredicate::EQ, kb, cg.c64(0))?;
            let last = cg.icmp(IntPredicate::EQ, kb, cg.c64(nkb - 1))?;
            let park = |cg: &Cg<'c>, r: usize, u: usize| -> R<IntValue<'c>> {
                let row = cg.add(r0, cg.c64(r as i64))?;
                let at = cg.add(cg.mul(row, cg.c64(NR_F32))?, cg.c64(16 * u as i64))?;
                cg.mul(at, cg.c64(4))
            };
            for r in 0..mr {
                for u in 0..nv {
                    let a = facc[r * nv + u];
                    cg.b.build_store(a, f32x16.const_zero())?;
                    if nkb > 1 {
                        let at = park(cg, r, u)?;
                        cg.if_then(cg.b.build_not(first, "")?, |cg| {
                            let v = cg.load_vec(pacc, at, f32x16, 64)?;
                            cg.b.build_store(a, v)?;
                            Ok(())
                        })?;
                    }
                }
            }
            // K in fours, unrolled.
            let q0 = cg.mul(kb, cg.c64(F32_K_SLICE / 4))?;
            let qn = cg.smin(cg.c64(F32_K_SLICE / 4), cg.sub(cg.c64(k16 / 4), q0)?)?;
            let i32x16 = cg.i32t().vec_type(16);
            cg.for_n(qn, |cg, q| {
                let q = cg.add(q0, q)?;
                if s.bf16 {
                    // Two pairs of K per four.
                    for u2 in 0..2 {
                        let kp = cg.add(cg.mul(q, cg.c64(2))?, cg.c64(u2))?;
                        let base = cg.mul(kp, cg.c64(NR_F32 * 4))?;
                        let wv: Vec<VectorValue> = (0..nv)
                            .map(|u| {
                                cg.load_vec(pan, cg.add(base, cg.c64(64 * u as i64))?, i32x16, 64)
                            })
                            .collect::<R<_>>()?;
                        for r in 0..mr {
                            let ri = cg.add(r0, cg.c64(r as i64))?;
                            // The row's pair at K 2·kp (bf16: 2 bytes each).
                            let at =
                                cg.mul(cg.add(cg.mul(ri, cg.c64(k16 / 2))?, kp)?, cg.c64(4))?;
                            let a = cg.b.build_load(cg.i32t(), cg.gep_bytes(adec, at)?, "")?;
                            let av = cg.splat_i32(a.into_int_value(), 16)?;
                            for (u, w) in wv.iter().enumerate() {
                                let fa = facc[r * nv + u];
                                let acc = cg.b.build_load(f32x16, fa, "")?.into_vector_value();
                                cg.b.build_store(fa, cg.vdpbf16ps(acc, av, *w)?)?;
                            }
                        }
                    }
                    return Ok(());
                }
                for u4 in 0..4 {
                    let kq = cg.add(cg.mul(q, cg.c64(4))?, cg.c64(u4))?;
                    let base = cg.mul(kq, cg.c64(NR_F32 * 4))?;
                    let wv: Vec<VectorValue> = (0..nv)
                        .map(|u| cg.load_vec(pan, cg.add(base, cg.c64(64 * u as i64))?, f32x16, 64))
                        .collect::<R<_>>()?;
                    for r in 0..mr {
                        let ri = cg.add(r0, cg.c64(r as i64))?;
                        let a = cg.load_f32(adec, cg.add(cg.mul(ri, cg.c64(k16))?, kq)?)?;
                        let av = cg.splat_f32(a, 16)?;
                        for (u, w) in wv.iter().enumerate() {
                            let fa = facc[r * nv + u];
                            let acc = cg.b.build_load(f32x16, fa, "")?.into_vector_value();
                            cg.b.build_store(fa, cg.fma_vec(av, *w, acc)?)?;
                        }
                    }
                }
                Ok(())
            })?;
            let epi = Epilogue {
                y: yp,
                ntot,
                coff,
                bias: s.has_b.then_some(bp),
                residual: s.has_r.then_some(rp),
                act: s.act.as_deref(),
                exps: (s.ascaled || s.wscaled)
                    .then_some((s.ascaled.then_some(eap), s.wscaled.then_some(ewp))),
            };
            let tile_at = (r0, c0, ncols);
            if nkb == 1 {
                return write_tile(cg, &epi, &facc[..mr * nv], tile, NR_F32, tile_at);
            }
            cg.if_then(last, |cg| {
                write_tile(cg, &epi, &facc[..mr * nv], tile, NR_F32, tile_at)
            })?;
            cg.if_then(cg.b.build_not(last, "")?, |cg| {
                for r in 0..mr {
                    for u in 0..nv {
                        let v = cg.b.build_load(f32x16, facc[r * nv + u], "")?;
                        cg.store_vec_aligned(pacc, park(cg, r, u)?, v.into_vector_value(), 64)?;
                    }
                }
                Ok(())
            })
        };
        cg.for_n(cg.c64(nkb), |cg, kb| {
            for_row_tiles(cg, rows, MR_F32, |cg, r0, mr| run(cg, r0, mr, kb))
        })
    });
    r
}

fn conv<'c>(cg: &mut Cg<'c>, n: &Node, ins: &[Option<Val<'c>>]) -> R<Val<'c>> {
    let (x, w) = (arg(cg, ins, 0)?.clone(), arg(cg, ins, 1)?.clone());
    let bias = ins.get(2).cloned().flatten();
    if x.dt != DType::F32 || w.dt != DType::F32 {
        return cg.err("Conv operands must be f32");
    }
    if x.rank() < 3 || w.rank() != x.rank() {
        return cg.err("Conv input must have rank >= 3 and match the weight");
    }
    match n.string("auto_pad").unwrap_or("NOTSET") {
        "NOTSET" | "VALID" => {}
        p => return cg.err(format!("auto_pad {p} is not supported")),
    }
    let sp = x.rank() - 2;
    let get = |name: &str, def: i64, len: usize| -> Vec<i64> {
        n.ints(name).map_or(vec![def; len], |v| v.to_vec())
    };
    let (strides, dil, pads) = (
        get("strides", 1, sp),
        get("dilations", 1, sp),
        get("pads", 0, 2 * sp),
    );
    if strides.len() != sp || dil.len() != sp || pads.len() != 2 * sp {
        return cg.err("strides, dilations or pads do not match the spatial rank");
    }
    if strides.iter().chain(&dil).any(|&v| v < 1) || pads.iter().any(|&v| v < 0) {
        return cg.err("strides and dilations must be >= 1, pads >= 0");
    }
    let g = n.int("group").unwrap_or(1);
    if g < 1 {
        return cg.err("group must be >= 1");
    }
    let (nb, ci, co, cig) = (x.dims[0], x.dims[1], w.dims[0], w.dims[1]);
    let ok = cg.and(
        cg.icmp(IntPredicate::EQ, ci, cg.mul(cig, cg.c64(g))?)?,
        cg.icmp(IntPredicate::EQ, cg.srem(co, cg.c64(g))?, cg.c64(0))?,
    )?;
    cg.check(ok, "channels do not fit the group")?;
    let ks = w.dims[2..].to_vec();
    let is = x.dims[2..].to_vec();
    let mut os = Vec::new();
    for d in 0..sp {
        let span = cg.mul(cg.c64(dil[d]), cg.sub(ks[d], cg.c64(1))?)?;
        let num = cg.sub(
            cg.sub(cg.add(is[d], cg.c64(pads[d] + pads[d + sp]))?, span)?,
            cg.c64(1),
        )?;
        os.push(cg.add(cg.sdiv(num, cg.c64(strides[d]))?, cg.c64(1))?);
        let ok = cg.icmp(IntPredicate::SGE, num, cg.c64(0))?;
        cg.check(ok, "Conv: the kernel is larger than the padded input")?;
    }
    let mut dims = vec![nb, co];
    dims.extend(&os);
    let y = cg.alloc(DType::F32, cg.product(&dims)?)?;
    let cpg = cg.sdiv(co, cg.c64(g))?;
    let xst = cg.strides(&x.dims)?;
    // Per group, as a GEMM: the group's weights `[cpg, cig · Π ks]` times
    // its input patches (im2col, zeros in the padding) laid out transposed,
    // `[cig · Π ks, (b, position)]`, so that the product comes out as
    // `[channel, (b, position)]`: W is the GEMM's row operand, the patches
    // its column panels (no dot products along the patch), and each
    // channel's positions are contiguous for the move to `[b, channel,
    // position]`.
    let npos = cg.product(&os)?;
    let kg = cg.mul(cig, cg.product(&ks)?)?;
    let prow = cg.mul(nb, npos)?;
    let col = cg.alloc(DType::F32, cg.mul(prow, kg)?)?;
    let gout = cg.alloc(DType::F32, cg.mul(prow, cpg)?)?;
    let mut loops = vec![cig];
    loops.extend(&ks);
    loops.push(nb);
    loops.extend(&os);
    let lst = cg.strides(&loops)?;
    cg.for_n(cg.c64(g), |cg, grp| {
        // C order over `loops` is the transposed patch matrix's own order.
        cg.for_nd(&loops, &mut |cg, li| {
            let (ki, b, oi) = (&li[..1 + sp], li[1 + sp], &li[2 + sp..]);
            let ic = cg.add(cg.mul(grp, cig)?, ki[0])?;
            let mut inside = cg.cx.bool_type().const_int(1, false);
            let mut xo = cg.add(cg.mul(b, xst[0])?, cg.mul(ic, xst[1])?)?;
            for d in 0..sp {
                let pos = cg.sub(
                    cg.add(
                        cg.mul(oi[d], cg.c64(strides[d]))?,
                        cg.mul(ki[1 + d], cg.c64(dil[d]))?,
                    )?,
                    cg.c64(pads[d]),
                )?;
                let inb = cg.and(
                    cg.icmp(IntPredicate::SGE, pos, cg.c64(0))?,
                    cg.icmp(IntPredicate::SLT, pos, is[d])?,
                )?;
                inside = cg.and(inside, inb)?;
                let posc = cg.select_i(inb, pos, cg.c64(0))?;
                xo = cg.add(xo, cg.mul(posc, xst[2 + d])?)?;
            }
            let xv = cg.load_f32(x.ptr, xo)?;
            let xv = cg.select_f(inside, xv, cg.cf32(0.0))?;
            cg.store(DType::F32, col, cg.offset(li, &lst)?, xv.into())
        })?;
        let wg = cg.gep(DType::F32, w.ptr, cg.mul(cg.mul(grp, cpg)?, kg)?)?;
        let shape = GemmShape {
            rows: cpg,
            k: kg,
            n: prow,
            ldy: prow,
            off: cg.c64(0),
        };
        gemm_f32(cg, wg, col, gout, shape, false, Madd::F32, None)?;
        cg.for_nd(&[nb, cpg, npos], &mut |cg, i| {
            let (b, oc, pos) = (i[0], i[1], i[2]);
            let ch = cg.add(cg.mul(grp, cpg)?, oc)?;
            let src = cg.add(cg.mul(cg.add(cg.mul(oc, nb)?, b)?, npos)?, pos)?;
            let mut v = cg.load_f32(gout, src)?;
            if let Some(bv) = &bias {
                v = cg.fadd(v, cg.load_f32(bv.ptr, ch)?)?;
            }
            let dst = cg.add(cg.mul(cg.add(cg.mul(b, co)?, ch)?, npos)?, pos)?;
            cg.store(DType::F32, y, dst, v.into())
        })
    })?;
    cg.release(col)?;
    cg.release(gout)?;
    Ok(Val {
        ptr: y,
        dims,
        dt: DType::F32,
    })
}

/// `out[b, i, j] = Σ_k a[b, i·sai + k·sak] · w[b, k·sbk + j·sbj]` over batch
/// offsets given per batch index; f32 accumulation in K order.
#[allow(clippy::too_many_arguments)]
fn small_gemm<'c>(
    cg: &mut Cg<'c>,
    batch: &[IntValue<'c>],
    (ap, a_b): (PointerValue<'c>, &[IntValue<'c>]),
    (bp, b_b): (PointerValue<'c>, &[IntValue<'c>]),
    (m, k, n): (IntValue<'c>, IntValue<'c>, IntValue<'c>),
    (sai, sak, sbk, sbj): (IntValue<'c>, IntValue<'c>, IntValue<'c>, IntValue<'c>),
    out: PointerValue<'c>,
) -> R<()> {
    let acc = cg.slot(cg.f32t().into(), cg.cf32(0.0).into())?;
    let (a_b, b_b) = (a_b.to_vec(), b_b.to_vec());
    let mut dims = batch.to_vec();
    dims.extend([m, n]);
    let ostr = cg.strides(&dims)?;
    let nb = batch.len();
    cg.for_nd(&dims.clone(), &mut |cg, idx| {
        let abase = cg.offset(&idx[..nb], &a_b)?;
        let bbase = cg.offset(&idx[..nb], &b_b)?;
        let (i, j) = (idx[nb], idx[nb + 1]);
        let arow = cg.add(abase, cg.mul(i, sai)?)?;
        let bcol = cg.add(bbase, cg.mul(j, sbj)?)?;
        cg.b.build_store(acc, cg.cf32(0.0))?;
        cg.for_n(k, |cg, t| {
            let x = cg.load_f32(ap, cg.add(arow, cg.mul(t, sak)?)?)?;
            let y = cg.load_f32(bp, cg.add(bcol, cg.mul(t, sbk)?)?)?;
            let s = cg.b.build_load(cg.f32t(), acc, "")?.into_float_value();
            cg.b.build_store(acc, cg.fadd(s, cg.fmul(x, y)?)?)?;
            Ok(())
        })?;
        let s = cg.b.build_load(cg.f32t(), acc, "")?;
        cg.store(DType::F32, out, cg.offset(idx, &ostr)?, s)
    })
}

/// ONNX MatMul with numpy broadcasting of the batch dimensions and 1-D
/// operands (`lpc.linear` covers constant weights; this is the rest).
fn matmul<'c>(cg: &mut Cg<'c>, ins: &[Option<Val<'c>>]) -> R<Val<'c>> {
    let (a, b) = (arg(cg, ins, 0)?.clone(), arg(cg, ins, 1)?.clone());
    if a.dt != DType::F32 || b.dt != DType::F32 || a.rank() == 0 || b.rank() == 0 {
        return cg.err("MatMul operands must be f32 of rank >= 1");
    }
    let one = cg.c64(1);
    let ad = if a.rank() == 1 {
        vec![one, a.dims[0]]
    } else {
        a.dims.clone()
    };
    let bd = if b.rank() == 1 {
        vec![b.dims[0], one]
    } else {
        b.dims.clone()
    };
    let (ra, rb) = (ad.len(), bd.len());
    let (m, k, k2, n) = (ad[ra - 2], ad[ra - 1], bd[rb - 2], bd[rb - 1]);
    let ok = cg.icmp(IntPredicate::EQ, k, k2)?;
    cg.check(ok, "MatMul inner dimensions differ")?;
    // Batch dims as broadcast views (strides in units of whole matrices).
    let av = Val {
        ptr: a.ptr,
        dims: ad[..ra - 2].to_vec(),
        dt: a.dt,
    };
    let bv = Val {
        ptr: b.ptr,
        dims: bd[..rb - 2].to_vec(),
        dt: b.dt,
    };
    let (batch, st) = cg.broadcast(&[&av, &bv])?;
    let (ma, mb) = (cg.mul(m, k)?, cg.mul(k, n)?);
    let sa: Vec<IntValue> = st[0].iter().map(|&x| cg.mul(x, ma)).collect::<R<_>>()?;
    let sb: Vec<IntValue> = st[1].iter().map(|&x| cg.mul(x, mb)).collect::<R<_>>()?;
    let mut odims = batch.clone();
    odims.extend([m, n]);
    let out = cg.alloc(DType::F32, cg.product(&odims)?)?;
    small_gemm(
        cg,
        &batch,
        (a.ptr, &sa),
        (b.ptr, &sb),
        (m, k, n),
        (k, one, n, one),
        out,
    )?;
    let mut dims = batch;
    if a.rank() != 1 {
        dims.push(m);
    }
    if b.rank() != 1 {
        dims.push(n);
    }
    Ok(Val {
        ptr: out,
        dims,
        dt: DType::F32,
    })
}

/// ONNX Gemm: `alpha · A' B' + beta · C` (A', B' transposed by the flags).
fn gemm<'c>(cg: &mut Cg<'c>, n: &Node, ins: &[Option<Val<'c>>]) -> R<Val<'c>> {
    let (a, b) = (arg(cg, ins, 0)?.clone(), arg(cg, ins, 1)?.clone());
    if a.rank() != 2 || b.rank() != 2 || a.dt != DType::F32 || b.dt != DType::F32 {
        return cg.err("Gemm operands must be 2-D f32");
    }
    let (ta, tb) = (
        n.int("transA").unwrap_or(0) != 0,
        n.int("transB").unwrap_or(0) != 0,
    );
    let (alpha, beta) = (
        n.float("alpha").unwrap_or(1.0),
        n.float("beta").unwrap_or(1.0),
    );
    let one = cg.c64(1);
    let (m, k, sai, sak) = if ta {
        (a.dims[1], a.dims[0], one, a.dims[1])
    } else {
        (a.dims[0], a.dims[1], a.dims[1], one)
    };
    let (k2, nn, sbk, sbj) = if tb {
        (b.dims[1], b.dims[0], one, b.dims[1])
    } else {
        (b.dims[0], b.dims[1], b.dims[1], one)
    };
    let ok = cg.icmp(IntPredicate::EQ, k, k2)?;
    cg.check(ok, "Gemm inner dimensions differ")?;
    let out = cg.alloc(DType::F32, cg.mul(m, nn)?)?;
    small_gemm(
        cg,
        &[],
        (a.ptr, &[]),
        (b.ptr, &[]),
        (m, k, nn),
        (sai, sak, sbk, sbj),
        out,
    )?;
    let y = Val {
        ptr: out,
        dims: vec![m, nn],
        dt: DType::F32,
    };
    let c = ins.get(2).cloned().flatten();
    let (ca, cb) = (cg.cf32(alpha), cg.cf32(beta));
    let r = match &c {
        Some(c) => cg.map(&[&y, c], DType::F32, &|cg, s| {
            let (super::elementwise::S::F(p), super::elementwise::S::F(q)) = (s[0], s[1]) else {
                return cg.err("Gemm operands must be float");
            };
            Ok(super::elementwise::S::F(
                cg.fadd(cg.fmul(p, ca)?, cg.fmul(q, cb)?)?,
            ))
        })?,
        None => cg.map(&[&y], DType::F32, &|cg, s| match s[0] {
            super::elementwise::S::F(p) => Ok(super::elementwise::S::F(cg.fmul(p, ca)?)),
            _ => cg.err("Gemm operands must be float"),
        })?,
    };
    cg.release(out)?;
    let ok = cg.icmp(IntPredicate::EQ, cg.product(&r.dims)?, cg.mul(m, nn)?)?;
    cg.check(ok, "Gemm: C does not broadcast to the output")?;
    Ok(r)
}

pub fn emit<'c>(cg: &mut Cg<'c>, n: &Node, ins: &[Option<Val<'c>>]) -> R<Option<Vec<Val<'c>>>> {
    Ok(Some(vec![match n.op.as_str() {
        "lpc.linear" => linear(cg, n, ins)?,
        "lpc.qgemm" => qgemm(cg, n, ins)?,
        "Conv" => conv(cg, n, ins)?,
        "MatMul" => matmul(cg, ins)?,
        "Gemm" => gemm(cg, n, ins)?,
        _ => return Ok(None),
    }]))
}
