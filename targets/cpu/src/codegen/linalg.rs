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
use super::core::{Cg, Val, R};
use inkwell::module::Linkage;
use inkwell::values::{BasicValueEnum, FloatValue, IntValue, PointerValue};
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

    /// The f64 dot product of two packed rows of `nb` blocks.
    fn packed_dot(
        &mut self,
        f: Format,
        a: PointerValue<'c>,
        w: PointerValue<'c>,
        nb: IntValue<'c>,
        acc: PointerValue<'c>,
        isum: PointerValue<'c>,
    ) -> R<FloatValue<'c>> {
        let f64t = self.f64t();
        self.b.build_store(acc, self.cf64(0.0))?;
        match f {
            Format::Mxfp4(_) => {
                let lut = self.table_i8("lpc.e2m1x2", &mxfp4::E2M1_X2);
                self.for_n(nb, |cg, t| {
                    let base = cg.mul(t, cg.c64(17))?;
                    let sa = cg.zext64(cg.load_u8(a, base)?)?;
                    let sw = cg.zext64(cg.load_u8(w, base)?)?;
                    cg.b.build_store(isum, cg.c64(0))?;
                    cg.for_n(cg.c64(16), |cg, i| {
                        let off = cg.add(base, cg.add(i, cg.c64(1))?)?;
                        let (ba, bw) = (cg.load_u8(a, off)?, cg.load_u8(w, off)?);
                        let mut s = cg.b.build_load(cg.i64t(), isum, "")?.into_int_value();
                        for shift in [0u64, 4] {
                            let sh = cg.i8t().const_int(shift, false);
                            let m = cg.i8t().const_int(15, false);
                            let na =
                                cg.b.build_and(cg.b.build_right_shift(ba, sh, false, "")?, m, "")?;
                            let nw =
                                cg.b.build_and(cg.b.build_right_shift(bw, sh, false, "")?, m, "")?;
                            let va = cg.sext64(cg.load_u8(lut, cg.zext64(na)?)?)?;
                            let vw = cg.sext64(cg.load_u8(lut, cg.zext64(nw)?)?)?;
                            s = cg.add(s, cg.mul(va, vw)?)?;
                        }
                        cg.b.build_store(isum, s)?;
                        Ok(())
                    })?;
                    let s = cg.b.build_load(cg.i64t(), isum, "")?.into_int_value();
                    let e = cg.sub(cg.add(sa, sw)?, cg.c64(256))?;
                    let mut p = cg.fmul(cg.si_to_f64(s)?, cg.pow2_f64(e)?)?;
                    let poisoned = cg.b.build_or(
                        cg.icmp(IntPredicate::EQ, sa, cg.c64(255))?,
                        cg.icmp(IntPredicate::EQ, sw, cg.c64(255))?,
                        "",
                    )?;
                    p = cg.select_f(poisoned, cg.cf64(f64::NAN), p)?;
                    let old = cg.b.build_load(f64t, acc, "")?.into_float_value();
                    cg.b.build_store(acc, cg.fadd(old, p)?)?;
                    Ok(())
                })?;
            }
            Format::Hif4(_) => {
                let scales: Vec<f32> = (0..=255u8).map(hif4::e6m2_to_f32).collect();
                let st = self.table_f32("lpc.e6m2", &scales);
                self.for_n(nb, |cg, t| {
                    let base = cg.mul(t, cg.c64(36))?;
                    cg.b.build_store(isum, cg.c64(0))?;
                    cg.for_n(cg.c64(64), |cg, i| {
                        let (ca, cw) = (cg.hif4_code(a, base, i)?, cg.hif4_code(w, base, i)?);
                        let s = cg.b.build_load(cg.i64t(), isum, "")?.into_int_value();
                        cg.b.build_store(isum, cg.add(s, cg.mul(ca, cw)?)?)?;
                        Ok(())
                    })?;
                    let s = cg.b.build_load(cg.i64t(), isum, "")?.into_int_value();
                    let sa = cg.fext(cg.load_f32(st, cg.zext64(cg.load_u8(a, base)?)?)?)?;
                    let sw = cg.fext(cg.load_f32(st, cg.zext64(cg.load_u8(w, base)?)?)?)?;
                    let p = cg.fdiv(cg.fmul(cg.fmul(cg.si_to_f64(s)?, sa)?, sw)?, cg.cf64(16.0))?;
                    let old = cg.b.build_load(f64t, acc, "")?.into_float_value();
                    cg.b.build_store(acc, cg.fadd(old, p)?)?;
                    Ok(())
                })?;
            }
            Format::Hif8(_) => {
                let vals: Vec<f32> = (0..=255u8).map(hif8::decode).collect();
                let lut = self.table_f32("lpc.hif8", &vals);
                self.for_n(nb, |cg, i| {
                    let da = cg.fext(cg.load_f32(lut, cg.zext64(cg.load_u8(a, i)?)?)?)?;
                    let dw = cg.fext(cg.load_f32(lut, cg.zext64(cg.load_u8(w, i)?)?)?)?;
                    let old = cg.b.build_load(f64t, acc, "")?.into_float_value();
                    cg.b.build_store(acc, cg.fadd(old, cg.fmul(da, dw)?)?)?;
                    Ok(())
                })?;
            }
        }
        Ok(self.b.build_load(f64t, acc, "")?.into_float_value())
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
    let tr = n.int("transposed").unwrap_or(0) != 0;
    let k = *x.dims.last().expect("rank >= 1");
    let rows = cg.product(&x.dims[..x.rank() - 1])?;
    let mut ws = Vec::new();
    let mut ntot = cg.c64(0);
    for p in 0..parts {
        let w = arg(cg, ins, 1 + p)?.clone();
        if w.rank() != 2 || w.dt != DType::F32 {
            return cg.err("weights must be 2-D f32");
        }
        let (kin, nn) = if tr {
            (w.dims[1], w.dims[0])
        } else {
            (w.dims[0], w.dims[1])
        };
        let ok = cg.icmp(IntPredicate::EQ, kin, k)?;
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
    for (w, nn, off) in ws {
        let mut caps: Vec<BasicValueEnum> = vec![
            x.ptr.into(),
            w.ptr.into(),
            y.into(),
            rows.into(),
            k.into(),
            nn.into(),
            ntot.into(),
            off.into(),
        ];
        if let Some(b) = &bias {
            caps.push(b.ptr.into());
        }
        let has_bias = bias.is_some();
        cg.parallel_for(nn, &caps, |cg, c, lo, hi| {
            let p = |i: usize| c[i].into_pointer_value();
            let i = |j: usize| c[j].into_int_value();
            let (xp, wp, yp) = (p(0), p(1), p(2));
            let (rows, k, nn, ntot, off) = (i(3), i(4), i(5), i(6), i(7));
            let acc = cg.b.build_alloca(cg.f32t(), "acc")?;
            cg.for_n(rows, |cg, r| {
                let xrow = cg.mul(r, k)?;
                let yrow = cg.add(cg.mul(r, ntot)?, off)?;
                if tr {
                    cg.for_range(lo, hi, |cg, j| {
                        cg.b.build_store(acc, cg.cf32(0.0))?;
                        let wrow = cg.mul(j, k)?;
                        cg.for_n(k, |cg, t| {
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
                    cg.for_range(lo, hi, |cg, j| {
                        cg.store(DType::F32, yp, cg.add(yrow, j)?, cg.cf32(0.0).into())
                    })?;
                    cg.for_n(k, |cg, t| {
                        let a = cg.load_f32(xp, cg.add(xrow, t)?)?;
                        let wrow = cg.mul(t, nn)?;
                        cg.for_range(lo, hi, |cg, j| {
                            let b = cg.load_f32(wp, cg.add(wrow, j)?)?;
                            let yi = cg.add(yrow, j)?;
                            let o = cg.load_f32(yp, yi)?;
                            cg.store(DType::F32, yp, yi, cg.fadd(o, cg.fmul(a, b)?)?.into())
                        })
                    })?;
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
        })?;
    }
    let mut dims = x.dims.clone();
    *dims.last_mut().expect("rank >= 1") = ntot;
    Ok(Val {
        ptr: y,
        dims,
        dt: DType::F32,
    })
}

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
    let pa = cg.alloc(DType::U8, cg.mul(rows, cg.c64(abpr))?)?;
    let ea = cg.alloc(DType::I32, cg.smax(rows, cg.c64(1))?)?;
    let (fc, mc) = af.map_or((-1, 0), lpc_rt::format_codes);
    let i32c = |v: i32| cg.i32t().const_int(v as u64, true);
    cg.call_void(
        cg.rt("lpc_rt_quantize_rows"),
        &[
            i32c(fc).into(),
            i32c(mc).into(),
            x.ptr.into(),
            rows.into(),
            k.into(),
            cg.c64(rot).into(),
            i32c(ascaled as i32).into(),
            pa.into(),
            ea.into(),
        ],
    )?;
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
        ws.push((w.clone(), e, w.dims[0], ntot));
        ntot = cg.add(ntot, w.dims[0])?;
    }
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
    for (w, e, nn, off) in ws {
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
        ];
        let (has_e, has_b, has_r) = (e.is_some(), bias.is_some(), residual.is_some());
        let weight_only = af.is_none();
        let act = act.clone();
        cg.parallel_for(nn, &caps, |cg, c, lo, hi| {
            let p = |i: usize| c[i].into_pointer_value();
            let i = |j: usize| c[j].into_int_value();
            let (ap, wp, yp) = (p(0), p(1), p(2));
            let (rows, ntot, off) = (i(3), i(5), i(6));
            let (eap, ewp, bp, rp) = (p(7), p(8), p(9), p(10));
            let acc = cg.b.build_alloca(cg.f64t(), "acc")?;
            let isum = cg.b.build_alloca(cg.i64t(), "isum")?;
            let nbv = if matches!(wf, Format::Hif8(_)) {
                cg.c64(kk)
            } else {
                cg.c64(nb_i)
            };
            cg.for_range(lo, hi, |cg, j| {
                let wrow = cg.gep_bytes(wp, cg.mul(j, cg.c64(bpr))?)?;
                cg.for_n(rows, |cg, r| {
                    let arow = cg.gep_bytes(ap, cg.mul(r, cg.c64(abpr))?)?;
                    let mut v = if weight_only {
                        cg.mixed_dot(wf, arow, wrow, kk, acc)?
                    } else {
                        cg.packed_dot(wf, arow, wrow, nbv, acc, isum)?
                    };
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
                })
            })
        })?;
    }
    cg.release(pa)?;
    cg.release(ea)?;
    let mut dims = x.dims.clone();
    *dims.last_mut().expect("rank >= 1") = ntot;
    Ok(Val {
        ptr: y,
        dims,
        dt: DType::F32,
    })
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
    let g = n.int("group").unwrap_or(1);
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
    }
    let mut dims = vec![nb, co];
    dims.extend(&os);
    let y = cg.alloc(DType::F32, cg.product(&dims)?)?;
    let cpg = cg.sdiv(co, cg.c64(g))?;
    let xst = cg.strides(&x.dims)?;
    let wst = cg.strides(&w.dims)?;
    let yst = cg.strides(&dims)?;
    let acc = cg.slot(cg.f32t().into(), cg.cf32(0.0).into())?;
    cg.for_nd(&dims.clone(), &mut |cg, oi| {
        let (b, oc) = (oi[0], oi[1]);
        let grp = cg.sdiv(oc, cpg)?;
        let init = match &bias {
            Some(bv) => cg.load_f32(bv.ptr, oc)?,
            None => cg.cf32(0.0),
        };
        cg.b.build_store(acc, init)?;
        let mut loops = vec![cig];
        loops.extend(&ks);
        cg.for_nd(&loops, &mut |cg, ki| {
            let ic = cg.add(cg.mul(grp, cig)?, ki[0])?;
            let mut inside = cg.cx.bool_type().const_int(1, false);
            let mut xo = cg.add(cg.mul(b, xst[0])?, cg.mul(ic, xst[1])?)?;
            for d in 0..sp {
                let pos = cg.sub(
                    cg.add(
                        cg.mul(oi[2 + d], cg.c64(strides[d]))?,
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
            let mut wo = cg.add(cg.mul(oc, wst[0])?, cg.mul(ki[0], wst[1])?)?;
            for d in 0..sp {
                wo = cg.add(wo, cg.mul(ki[1 + d], wst[2 + d])?)?;
            }
            let xv = cg.load_f32(x.ptr, xo)?;
            let xv = cg.select_f(inside, xv, cg.cf32(0.0))?;
            let wv = cg.load_f32(w.ptr, wo)?;
            let s = cg.b.build_load(cg.f32t(), acc, "")?.into_float_value();
            cg.b.build_store(acc, cg.fadd(s, cg.fmul(xv, wv)?)?)?;
            Ok(())
        })?;
        let s = cg.b.build_load(cg.f32t(), acc, "")?;
        cg.store(DType::F32, y, cg.offset(oi, &yst)?, s)
    })?;
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
