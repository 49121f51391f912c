//! `lpc.qgemm` on the GPU, as three kernels:
//!
//! 1. `rotate`: the block Hadamard rotation of activation rows, one block per
//!    work item, with the runtime's butterfly order (bit-identical);
//! 2. `quant_mxfp4`: activation blocks to MXFP4 by SPEC §2.2 (the runtime's
//!    encoder: amax from the magnitudes' bits, the interval comparisons),
//!    stored as the integer codes of the dot-product identity (2·E2M1 in
//!    [-12, 12], one i8 per element) and the E8M0 exponent per block;
//! 3. `dot`: one output per work item: per block the exact integer sum of
//!    code products times the power-of-two scale product, accumulated in f64
//!    in K order (the interpreter's exact products), then bias, activation
//!    and residual. Weights stay packed as the compiler wrote them.
//!
//! Straightforward kernels for correctness; the tensor-core version (int8
//! `mma.sync` m16n8k32, one k32 step per MXFP4 block) replaces `dot` where a
//! GPU is at hand to measure it.

use crate::kernel::{Kernel, Param};
use crate::mlir::{Ty, B};
use lpc_runtime::Format;

const X: Ty = Ty::Index;

/// The rotation kernel. Params: `y`, `x` (f32 rows of `k`), `k`, `blk`,
/// `scale` (1/√blk as the runtime computes it). Item = row·(k/blk) + block.
pub fn rotate(name: &str) -> Kernel {
    let params = vec![
        ("y".to_string(), Param::Buf(Ty::F32)),
        ("x".to_string(), Param::Buf(Ty::F32)),
        ("k".to_string(), Param::Index),
        ("blk".to_string(), Param::Index),
        ("scale".to_string(), Param::F32),
    ];
    let mut b = B::new();
    let base = b.bin("muli", "%i", "%blk", X);
    let c0 = b.index(0);
    let c1 = b.index(1);
    let c2 = b.index(2);
    b.for_(&c0, "%blk", &c1, &[], |b, j, _| {
        let a = b.bin("addi", &base, j, X);
        let v = b.load("%x", &a, Ty::F32);
        b.store(&v, "%y", &a, Ty::F32);
        vec![]
    });
    // h = 1, 2, 4, ... < blk: for i in (0..blk).step_by(2h), j in i..i+h.
    b.line(format!(
        "%hw = scf.while (%h = {c1}) : (index) -> index {{\n      \
         %go = arith.cmpi ult, %h, %blk : index\n      \
         scf.condition(%go) %h : index\n    }} do {{\n    ^bb0(%hh: index):"
    ));
    let h2 = b.bin("muli", "%hh", &c2, X);
    b.for_(&c0, "%blk", &h2, &[], |b, i, _| {
        let hi = b.bin("addi", i, "%hh", X);
        b.for_(i, &hi, &c1, &[], |b, j, _| {
            let pa = b.bin("addi", &base, j, X);
            let pb = b.bin("addi", &pa, "%hh", X);
            let u = b.load("%y", &pa, Ty::F32);
            let v = b.load("%y", &pb, Ty::F32);
            let s = b.bin("addf", &u, &v, Ty::F32);
            let d = b.bin("subf", &u, &v, Ty::F32);
            b.store(&s, "%y", &pa, Ty::F32);
            b.store(&d, "%y", &pb, Ty::F32);
            vec![]
        });
        vec![]
    });
    b.line(format!("scf.yield {h2} : index"));
    b.line("}");
    b.for_(&c0, "%blk", &c1, &[], |b, j, _| {
        let a = b.bin("addi", &base, j, X);
        let v = b.load("%y", &a, Ty::F32);
        let s = b.bin("mulf", &v, "%scale", Ty::F32);
        b.store(&s, "%y", &a, Ty::F32);
        vec![]
    });
    Kernel {
        name: name.into(),
        params,
        body: b.finish(),
    }
}

/// MXFP4 activation quantization. Params: `codes` (i8, `[rows, nb·32]`),
/// `exps` (i32 `[rows·nb]`: the E8M0 byte, 255 for a poisoned block), `x`
/// (f32 `[rows, k]`), `k`, `nb`. Item = row·nb + block. `ties_away` selects
/// the rounding (RNE otherwise).
pub fn quant_mxfp4(name: &str, ties_away: bool) -> Kernel {
    let params = vec![
        ("codes".to_string(), Param::Buf(Ty::I8)),
        ("exps".to_string(), Param::Buf(Ty::I32)),
        ("x".to_string(), Param::Buf(Ty::F32)),
        ("k".to_string(), Param::Index),
        ("nb".to_string(), Param::Index),
    ];
    let mut b = B::new();
    let i32t = Ty::I32;
    let row = b.bin("divui", "%i", "%nb", X);
    let blk = b.bin("remui", "%i", "%nb", X);
    let c32 = b.index(32);
    let c0 = b.index(0);
    let c1 = b.index(1);
    let rowbase = b.bin("muli", &row, "%k", X);
    let k0 = b.bin("muli", &blk, &c32, X);
    let zf = b.f32(0.0);
    // Element e of the block, 0 past the end of the row.
    let elem = |b: &mut B, e: &str| -> String {
        let kk = b.bin("addi", &k0, e, X);
        let inr = b.cmpi("ult", &kk, "%k", X);
        let a = b.bin("addi", &rowbase, &kk, X);
        let safe = b.select(&inr, &a, &c0, X);
        let v = b.load("%x", &safe, Ty::F32);
        b.select(&inr, &v, &zf, Ty::F32)
    };
    let zero = b.int(0, i32t);
    let mask = b.int(0x7FFF_FFFF, i32t);
    let amax = b.for_(&c0, &c32, &c1, &[(&zero, i32t)], |b, e, acc| {
        let v = elem(b, e);
        let bits = b.bitcast(&v, Ty::F32, i32t);
        let m = b.bin("andi", &bits, &mask, i32t);
        vec![b.bin("maxui", &acc[0], &m, i32t)]
    });
    let inf = b.int(0x7F80_0000, i32t);
    let poisoned = b.cmpi("uge", &amax[0], &inf, i32t);
    // A poisoned block's amax ignores the non-finite elements (SPEC §2.2
    // step 1); its codes never matter (every product with it is NaN), so
    // the finite amax rule below runs on the clamped value.
    let amax_f = b.select(&poisoned, &zero, &amax[0], i32t);
    let c23 = b.int(23, i32t);
    let ef = b.bin("shrui", &amax_f, &c23, i32t);
    let two = b.int(2, i32t);
    let e0 = b.bin("subi", &ef, &two, i32t);
    let e = b.bin("maxsi", &e0, &zero, i32t);
    let c254 = b.int(254, i32t);
    let ib = b.bin("subi", &c254, &e, i32t);
    let invb = b.bin("shli", &ib, &c23, i32t);
    let inv = b.bitcast(&invb, i32t, Ty::F32);
    let ff = b.int(255, i32t);
    let stored = b.select(&poisoned, &ff, &e, i32t);
    b.store(&stored, "%exps", "%i", i32t);
    let thresholds: [(f32, bool); 7] = [
        (0.25, false),
        (0.75, true),
        (1.25, false),
        (1.75, true),
        (2.5, false),
        (3.5, true),
        (5.0, false),
    ];
    let cbase = b.bin("muli", "%i", &c32, X);
    b.for_(&c0, &c32, &c1, &[], |b, el, _| {
        let v = elem(b, el);
        let bits = b.bitcast(&v, Ty::F32, i32t);
        let mag = b.bin("andi", &bits, &mask, i32t);
        let a = b.bitcast(&mag, i32t, Ty::F32);
        let r = b.bin("mulf", &a, &inv, Ty::F32);
        let mut code = b.int(0, i32t);
        for (t, ge) in thresholds {
            // RNE: > at ties that round down, >= at ties that round up;
            // ties-away: >= everywhere.
            let pred = if ge || ties_away { "oge" } else { "ogt" };
            let tc = b.f32(t);
            let c = b.cmpf(pred, &r, &tc, Ty::F32);
            let ci = b.cast("extui", &c, Ty::I1, i32t);
            code = b.bin("addi", &code, &ci, i32t);
        }
        let val = x2_of_code(b, &code);
        let neg = b.cmpi("slt", &bits, &zero, i32t);
        let at = b.bin("addi", &cbase, el, X);
        store_code(b, &neg, &val, &at);
        vec![]
    });
    Kernel {
        name: name.into(),
        params,
        body: b.finish(),
    }
}

/// Stores `±mag` (i32, negated when `neg`) as the i8 code at `%codes[at]`.
fn store_code(b: &mut B, neg: &str, mag: &str, at: &str) {
    let t = Ty::I32;
    let z = b.int(0, t);
    let nm = b.bin("subi", &z, mag, t);
    let sv = b.select(neg, &nm, mag, t);
    let s8 = b.cast("trunci", &sv, t, Ty::I8);
    b.store(&s8, "%codes", at, Ty::I8);
}

/// 2·E2M1 magnitude of a magnitude code m (0..8): 0,1,2,3,4,6,8,12 =
/// m < 4 ? m : (2 + (m & 1)) << ((m >> 1) - 1).
fn x2_of_code(b: &mut B, m: &str) -> String {
    let t = Ty::I32;
    let four = b.int(4, t);
    let one = b.int(1, t);
    let two = b.int(2, t);
    let small = b.cmpi("ult", m, &four, t);
    let odd = b.bin("andi", m, &one, t);
    let mant = b.bin("addi", &two, &odd, t);
    let h = b.bin("shrui", m, &one, t);
    let sh = b.bin("subi", &h, &one, t);
    let big = b.bin("shli", &mant, &sh, t);
    b.select(&small, m, &big, t)
}

/// The 4-bit code of element `e` in data bytes starting at `data` of `w`
/// (element 2k in the low nibble of byte k), as i32.
fn nibble(b: &mut B, w: &str, data: &str, e: &str) -> String {
    let i32t = Ty::I32;
    let c2 = b.index(2);
    let half = b.bin("divui", e, &c2, X);
    let at = b.bin("addi", data, &half, X);
    let byte = b.load(w, &at, Ty::I8);
    let bw = b.cast("extui", &byte, Ty::I8, i32t);
    let odd = b.bin("remui", e, &c2, X);
    let oddi = b.cast("index_cast", &odd, X, i32t);
    let four = b.int(4, i32t);
    let sh = b.bin("muli", &oddi, &four, i32t);
    let nib = b.bin("shrui", &bw, &sh, i32t);
    let f = b.int(15, i32t);
    b.bin("andi", &nib, &f, i32t)
}

/// `mag` negated when the code's sign bit (8) is set.
fn apply_sign(b: &mut B, code: &str, mag: &str) -> String {
    let i32t = Ty::I32;
    let z = b.int(0, i32t);
    let eight = b.int(8, i32t);
    let sg = b.bin("andi", code, &eight, i32t);
    let neg = b.cmpi("ne", &sg, &z, i32t);
    let nm = b.bin("subi", &z, mag, i32t);
    b.select(&neg, &nm, mag, i32t)
}

/// The signed 2·E2M1 integer of element `e` of the MXFP4 block at `wb`.
fn mxfp4_x2(b: &mut B, w: &str, wb: &str, e: &str) -> String {
    let c1 = b.index(1);
    let data = b.bin("addi", wb, &c1, X);
    let code = nibble(b, w, &data, e);
    let seven = b.int(7, Ty::I32);
    let m = b.bin("andi", &code, &seven, Ty::I32);
    let mag = x2_of_code(b, &m);
    apply_sign(b, &code, &mag)
}

/// The f64 whose exponent field is `e + bias` (an i32 value), i.e. 2^(e + bias - 1023).
fn pow2_f64(b: &mut B, e: &str, bias: i64) -> String {
    let bc = b.int(bias, Ty::I32);
    let ef = b.bin("addi", e, &bc, Ty::I32);
    let e64 = b.cast("extsi", &ef, Ty::I32, Ty::I64);
    let c52 = b.int(52, Ty::I64);
    let bits = b.bin("shli", &e64, &c52, Ty::I64);
    b.bitcast(&bits, Ty::I64, Ty::F64)
}

/// 2^k as f32 for an i32 `k` in [-149, 127], from bits (exact; subnormal
/// below -126), as the runtime's `pow2`.
fn pow2_f32(b: &mut B, k: &str) -> String {
    let t = Ty::I32;
    let c127 = b.int(127, t);
    let c23 = b.int(23, t);
    let normal_e = b.bin("addi", k, &c127, t);
    let normal = b.bin("shli", &normal_e, &c23, t);
    let c149 = b.int(149, t);
    let sub_sh = b.bin("addi", k, &c149, t);
    let one = b.int(1, t);
    let zero = b.int(0, t);
    let sub_sh = b.bin("maxsi", &sub_sh, &zero, t);
    let sub = b.bin("shli", &one, &sub_sh, t);
    let lim = b.int(-126, t);
    let is_normal = b.cmpi("sge", k, &lim, t);
    let bits = b.select(&is_normal, &normal, &sub, t);
    b.bitcast(&bits, t, Ty::F32)
}

/// HiF8 activation quantization, one row per work item: with `scaled`, the
/// row's power of two putting its amax into [8, 16) (the runtime's
/// `hif8_exponent`), then each element encoded by the runtime's
/// round-to-nearest table (`ta`: 8192 codes indexed by `bits >> 19`; NaN
/// gives 0x80; `saturate` turns ±Inf into ±max). Params: `codes` (i8
/// `[rows, k]`), `exps` (i32 per row), `x` (f32 `[rows, k]`), `ta`, `k`.
pub fn quant_hif8(name: &str, saturate: bool, scaled: bool) -> Kernel {
    let params = vec![
        ("codes".to_string(), Param::Buf(Ty::I8)),
        ("exps".to_string(), Param::Buf(Ty::I32)),
        ("x".to_string(), Param::Buf(Ty::F32)),
        ("ta".to_string(), Param::Buf(Ty::I8)),
        ("k".to_string(), Param::Index),
    ];
    let mut b = B::new();
    let t = Ty::I32;
    let f = Ty::F32;
    let base = b.bin("muli", "%i", "%k", X);
    let c0 = b.index(0);
    let c1 = b.index(1);
    let zero = b.int(0, t);
    let e = if scaled {
        // amax as f32::max folds it: NaN elements are skipped.
        let z = b.f32(0.0);
        let am = b.for_(&c0, "%k", &c1, &[(&z, f)], |b, j, acc| {
            let a = b.bin("addi", &base, j, X);
            let v = b.load("%x", &a, f);
            let av = b.absf(&v, f);
            vec![b.bin("maxnumf", &acc[0], &av, f)]
        });
        let amax = &am[0];
        // lg(amax): the exponent field, or for a subnormal lg(amax·2^64)-64.
        let bits = b.bitcast(amax, f, t);
        let c23 = b.int(23, t);
        let ef = b.bin("shrui", &bits, &c23, t);
        let c127 = b.int(127, t);
        let lg_n = b.bin("subi", &ef, &c127, t);
        let big = b.f32(18446744073709551616.0);
        let scaled_up = b.bin("mulf", amax, &big, f);
        let sb = b.bitcast(&scaled_up, f, t);
        let sef = b.bin("shrui", &sb, &c23, t);
        let c191 = b.int(127 + 64, t);
        let lg_s = b.bin("subi", &sef, &c191, t);
        let is_sub = b.cmpi("eq", &ef, &zero, t);
        let lg = b.select(&is_sub, &lg_s, &lg_n, t);
        let three = b.int(3, t);
        let e0 = b.bin("subi", &three, &lg, t);
        let lo = b.int(-126, t);
        let hi = b.int(127, t);
        let e1 = b.bin("maxsi", &e0, &lo, t);
        let e2 = b.bin("minsi", &e1, &hi, t);
        // 0 for a zero or non-finite amax.
        let inf = b.int(0x7F80_0000, t);
        let fin = b.cmpi("ult", &bits, &inf, t);
        let pos = b.cmpi("ne", &bits, &zero, t);
        let ok = b.bin("andi", &fin, &pos, Ty::I1);
        b.select(&ok, &e2, &zero, t)
    } else {
        zero.clone()
    };
    b.store(&e, "%exps", "%i", t);
    let s = pow2_f32(&mut b, &e);
    b.for_(&c0, "%k", &c1, &[], |b, j, _| {
        let a = b.bin("addi", &base, j, X);
        let v = b.load("%x", &a, f);
        let y = b.bin("mulf", &v, &s, f);
        let u = b.bitcast(&y, f, t);
        let c19 = b.int(19, t);
        let ti = b.bin("shrui", &u, &c19, t);
        let tx = b.cast("index_cast", &ti, t, X);
        let c = b.load("%ta", &tx, Ty::I8);
        let mask = b.int(0x7FFF_FFFF, t);
        let mag = b.bin("andi", &u, &mask, t);
        let inf = b.int(0x7F80_0000, t);
        let nan = b.cmpi("ugt", &mag, &inf, t);
        let qn = b.int(-128, Ty::I8);
        let mut code = b.select(&nan, &qn, &c, Ty::I8);
        if saturate {
            let m7f = b.int(0x7F, Ty::I8);
            let low = b.bin("andi", &code, &m7f, Ty::I8);
            let c6f = b.int(0x6F, Ty::I8);
            let is_inf = b.cmpi("eq", &low, &c6f, Ty::I8);
            let d = b.cast("extui", &is_inf, Ty::I1, Ty::I8);
            code = b.bin("subi", &code, &d, Ty::I8);
        }
        b.store(&code, "%codes", &a, Ty::I8);
        vec![]
    });
    Kernel {
        name: name.into(),
        params,
        body: b.finish(),
    }
}

/// The integer code ±(c << (E1_8 + E1_16)) (SPEC §3.6, in [-28, 28]) of
/// element `e` of the packed HiF4 unit at byte `wb` of `w`.
fn hif4_int_code(b: &mut B, w: &str, wb: &str, e: &str) -> String {
    let i32t = Ty::I32;
    let c1 = b.index(1);
    let c2 = b.index(2);
    let c4 = b.index(4);
    let c8 = b.index(8);
    let seven = b.int(7, i32t);
    let one = b.int(1, i32t);
    // meta[1]: E1_8 of group g = e/8 in bit 7-g.
    let g = b.bin("divui", e, &c8, X);
    let m1a = b.bin("addi", wb, &c1, X);
    let m1 = b.load(w, &m1a, Ty::I8);
    let m1i = b.cast("extui", &m1, Ty::I8, i32t);
    let gi = b.cast("index_cast", &g, X, i32t);
    let s8 = b.bin("subi", &seven, &gi, i32t);
    let e8s = b.bin("shrui", &m1i, &s8, i32t);
    let e8 = b.bin("andi", &e8s, &one, i32t);
    // meta[2 + h/8]: E1_16 of subgroup h = e/4 in bit 7 - h%8.
    let h = b.bin("divui", e, &c4, X);
    let hb = b.bin("divui", &h, &c8, X);
    let m2o = b.bin("addi", wb, &c2, X);
    let m2a = b.bin("addi", &m2o, &hb, X);
    let m2 = b.load(w, &m2a, Ty::I8);
    let m2i = b.cast("extui", &m2, Ty::I8, i32t);
    let hr = b.bin("remui", &h, &c8, X);
    let hri = b.cast("index_cast", &hr, X, i32t);
    let s16 = b.bin("subi", &seven, &hri, i32t);
    let e16s = b.bin("shrui", &m2i, &s16, i32t);
    let e16 = b.bin("andi", &e16s, &one, i32t);
    // Nibble of element e: data bytes from 4.
    let d0 = b.bin("addi", wb, &c4, X);
    let code = nibble(b, w, &d0, e);
    let mag0 = b.bin("andi", &code, &seven, i32t);
    let sh2 = b.bin("addi", &e8, &e16, i32t);
    let mag = b.bin("shli", &mag0, &sh2, i32t);
    apply_sign(b, &code, &mag)
}

/// The E6M2 scale of the HiF4 unit at byte `wb`, as f64 (NaN if poisoned):
/// 2^((s >> 2) - 48) · (1 + (s & 3)/4).
fn hif4_scale(b: &mut B, w: &str, wb: &str) -> String {
    let i32t = Ty::I32;
    let f64t = Ty::F64;
    let sb = b.load(w, wb, Ty::I8);
    let sbyte = b.cast("extui", &sb, Ty::I8, i32t);
    let two = b.int(2, i32t);
    let ex = b.bin("shrui", &sbyte, &two, i32t);
    let p2 = pow2_f64(b, &ex, 1023 - 48);
    let three = b.int(3, i32t);
    let mant = b.bin("andi", &sbyte, &three, i32t);
    let four = b.int(4, i32t);
    let m4 = b.bin("addi", &mant, &four, i32t);
    let mf = b.cast("sitofp", &m4, i32t, f64t);
    let quarter = b.f64(0.25);
    let mfs = b.bin("mulf", &mf, &quarter, f64t);
    let sc = b.bin("mulf", &p2, &mfs, f64t);
    let ff = b.int(255, i32t);
    let p = b.cmpi("eq", &sbyte, &ff, i32t);
    let nan = b.f64(f64::NAN);
    b.select(&p, &nan, &sc, f64t)
}

/// SPEC §0's bf16 rounding of a finite f32 (as the runtime's `bf16_round`).
fn bf16_round(b: &mut B, x: &str) -> String {
    let t = Ty::I32;
    let u = b.bitcast(x, Ty::F32, t);
    let c16 = b.int(16, t);
    let one = b.int(1, t);
    let sh = b.bin("shrui", &u, &c16, t);
    let lsb = b.bin("andi", &sh, &one, t);
    let bias = b.int(0x7FFF, t);
    let r = b.bin("addi", &lsb, &bias, t);
    let sum = b.bin("addi", &u, &r, t);
    let mask = b.int(0xFFFF_0000u32 as i32 as i64, t);
    let m = b.bin("andi", &sum, &mask, t);
    b.bitcast(&m, t, Ty::F32)
}

/// HiF4 activation quantization by SPEC §3.4 (the runtime's encoder, both
/// variants), one 64-element unit per work item, stored as the integer
/// codes of the dot-product identity (i8, one per element) and the unit's
/// scale S as f32 (NaN for a poisoned unit). Params: `codes` (i8
/// `[rows, nu·64]`), `scales` (f32 `[rows·nu]`), `x` (f32 `[rows, k]`), `k`,
/// `nu`. Item = row·nu + unit.
pub fn quant_hif4(name: &str, amct: bool) -> Kernel {
    let params = vec![
        ("codes".to_string(), Param::Buf(Ty::I8)),
        ("scales".to_string(), Param::Buf(Ty::F32)),
        ("x".to_string(), Param::Buf(Ty::F32)),
        ("k".to_string(), Param::Index),
        ("nu".to_string(), Param::Index),
    ];
    let mut b = B::new();
    let (t, f) = (Ty::I32, Ty::F32);
    let row = b.bin("divui", "%i", "%nu", X);
    let unit = b.bin("remui", "%i", "%nu", X);
    let c0 = b.index(0);
    let c1 = b.index(1);
    let c64 = b.index(64);
    let rowbase = b.bin("muli", &row, "%k", X);
    let k0 = b.bin("muli", &unit, &c64, X);
    let zf = b.f32(0.0);
    let inf = b.int(0x7F80_0000, t);
    let mask = b.int(0x7FFF_FFFF, t);
    // Element j of the unit: 0 past the row, non-finite ones replaced by
    // +0 (the filler of a poisoned unit); returns (value, non-finite?).
    let elem = |b: &mut B, j: &str| -> (String, String) {
        let kk = b.bin("addi", &k0, j, X);
        let inr = b.cmpi("ult", &kk, "%k", X);
        let a = b.bin("addi", &rowbase, &kk, X);
        let safe = b.select(&inr, &a, &c0, X);
        let v = b.load("%x", &safe, f);
        let v = b.select(&inr, &v, &zf, f);
        let bits = b.bitcast(&v, f, t);
        let mag = b.bin("andi", &bits, &mask, t);
        let bad = b.cmpi("uge", &mag, &inf, t);
        (b.select(&bad, &zf, &v, f), bad)
    };
    // Max of |x| over elements [lo, lo + n) of the unit.
    let span_max = |b: &mut B, lo: &str, n: i64| -> String {
        let cn = b.index(n);
        let hi = b.bin("addi", lo, &cn, X);
        let m = b.for_(lo, &hi, &c1, &[(&zf, f)], |b, j, acc| {
            let (v, _) = elem(b, j);
            let a = b.absf(&v, f);
            vec![b.bin("maxnumf", &acc[0], &a, f)]
        });
        m[0].clone()
    };
    // Step 1 (poison) and the unit's amax (= the max of the group maxima).
    let fl = b.op("arith.constant false");
    let r = b.for_(&c0, &c64, &c1, &[(&zf, f), (&fl, Ty::I1)], |b, j, acc| {
        let (v, bad) = elem(b, j);
        let a = b.absf(&v, f);
        vec![
            b.bin("maxnumf", &acc[0], &a, f),
            b.bin("ori", &acc[1], &bad, Ty::I1),
        ]
    });
    let (vmax, poisoned) = (r[0].clone(), r[1].clone());
    // Step 4: sf = clamp(bf16(vmax · D7), 2^-48, 49152).
    let d7 = b.f32(0.142_578_13);
    let p = b.bin("mulf", &vmax, &d7, f);
    let sf0 = bf16_round(&mut b, &p);
    let smin = b.f32(f32::from_bits((127 - 48) << 23));
    let smax = b.f32(49152.0);
    let sf1 = b.bin("maximumf", &sf0, &smin, f);
    let sf = b.bin("minimumf", &sf1, &smax, f);
    // Step 5: E6M2 rounding.
    let sbits = b.bitcast(&sf, f, t);
    let c23 = b.int(23, t);
    let c127 = b.int(127, t);
    let ef = b.bin("shrui", &sbits, &c23, t);
    let e = b.bin("subi", &ef, &c127, t);
    let c16 = b.int(16, t);
    let sh = b.bin("shrui", &sbits, &c16, t);
    let c7f = b.int(0x7F, t);
    let low = b.bin("andi", &sh, &c7f, t);
    let c128 = b.int(128, t);
    let n = b.bin("addi", &c128, &low, t);
    let c5 = b.int(5, t);
    let q0 = b.bin("shrui", &n, &c5, t);
    let c31 = b.int(31, t);
    let rem = b.bin("andi", &n, &c31, t);
    let one = b.int(1, t);
    let gt = b.cmpi("ugt", &rem, &c16, t);
    let tie = b.cmpi("eq", &rem, &c16, t);
    let qodd = b.bin("andi", &q0, &one, t);
    let zero_i = b.int(0, t);
    let odd = b.cmpi("ne", &qodd, &zero_i, t);
    let tie_odd = b.bin("andi", &tie, &odd, Ty::I1);
    let up = b.bin("ori", &gt, &tie_odd, Ty::I1);
    let upi = b.cast("extui", &up, Ty::I1, t);
    let q1 = b.bin("addi", &q0, &upi, t);
    let c8 = b.int(8, t);
    let wrap = b.cmpi("eq", &q1, &c8, t);
    let four = b.int(4, t);
    let q = b.select(&wrap, &four, &q1, t);
    let wi = b.cast("extui", &wrap, Ty::I1, t);
    let e = b.bin("addi", &e, &wi, t);
    // S = q · 2^(e - 2) (exact), its reciprocal rounded to bf16 (step 6).
    let qf = b.cast("sitofp", &q, t, f);
    let two = b.int(2, t);
    let em2 = b.bin("subi", &e, &two, t);
    let p2 = pow2_f32(&mut b, &em2);
    let scale = b.bin("mulf", &qf, &p2, f);
    let onef = b.f32(1.0);
    let inv = b.bin("divf", &onef, &scale, f);
    let rec = bf16_round(&mut b, &inv);
    let nan = b.f32(f32::NAN);
    let stored = b.select(&poisoned, &nan, &scale, f);
    b.store(&stored, "%scales", "%i", f);
    // Steps 7 and 8, element by element (group maxima recomputed).
    let cbase = b.bin("muli", "%i", &c64, X);
    let c4i = b.index(4);
    let c8i = b.index(8);
    b.for_(&c0, &c64, &c1, &[], |b, j, _| {
        let g = b.bin("divui", j, &c8i, X);
        let g0 = b.bin("muli", &g, &c8i, X);
        let v8 = span_max(b, &g0, 8);
        let h = b.bin("divui", j, &c4i, X);
        let h0 = b.bin("muli", &h, &c4i, X);
        let v4 = span_max(b, &h0, 4);
        let r8 = b.bin("mulf", &v8, &rec, f);
        let c4f = b.f32(4.0);
        let e8b = b.cmpf("oge", &r8, &c4f, f);
        let e8 = b.cast("extui", &e8b, Ty::I1, t);
        let r4 = b.bin("mulf", &v4, &rec, f);
        let one = b.int(1, t);
        let e8p = b.bin("addi", &e8, &one, t);
        let e8f = b.cast("sitofp", &e8p, t, f);
        let c2f = b.f32(2.0);
        let thr = b.bin("mulf", &c2f, &e8f, f);
        let e16b = b.cmpf("oge", &r4, &thr, f);
        let e16 = b.cast("extui", &e16b, Ty::I1, t);
        let d = b.bin("addi", &e8, &e16, t);
        let base = b.int(if amct { 127 } else { 129 }, t);
        let pe = b.bin("subi", &base, &d, t);
        let c23 = b.int(23, t);
        let pwb = b.bin("shli", &pe, &c23, t);
        let pw = b.bitcast(&pwb, t, f);
        let (v, _) = elem(b, j);
        let a = b.absf(&v, f);
        let ar = b.bin("mulf", &a, &rec, f);
        let m = b.bin("mulf", &ar, &pw, f);
        let half = b.f32(0.5);
        let y = if amct {
            let r = bf16_round(b, &m);
            let c4 = b.f32(4.0);
            let r4 = b.bin("mulf", &c4, &r, f);
            b.bin("addf", &r4, &half, f)
        } else {
            b.bin("addf", &m, &half, f)
        };
        let c8f = b.f32(8.0);
        let yc = b.bin("minimumf", &y, &c8f, f);
        let yi = b.cast("fptoui", &yc, f, t);
        let seven = b.int(7, t);
        let c = b.bin("minui", &yi, &seven, t);
        let mag = b.bin("shli", &c, &d, t);
        let zf = b.f32(0.0);
        let neg = b.cmpf("olt", &v, &zf, f);
        let at = b.bin("addi", &cbase, j, X);
        store_code(b, &neg, &mag, &at);
        vec![]
    });
    Kernel {
        name: name.into(),
        params,
        body: b.finish(),
    }
}

/// What a `dot` kernel is specialized on.
#[derive(Clone, PartialEq, Debug)]
pub struct DotSpec {
    /// The weights' format (packed rows of `k`).
    pub wformat: Format,
    /// Activations quantized to MXFP4 (codes + exponents), else f32.
    pub a_mxfp4: bool,
    /// Activations quantized to HiF8 (codes, and with `a_scaled` their
    /// per-row power-of-two exponents: scaled HiF8).
    pub a_hif8: bool,
    pub a_scaled: bool,
    /// Activations quantized to HiF4 (integer codes and unit scales).
    pub a_hif4: bool,
    /// Weights with per-row exponents (`we<p>`, scaled HiF8).
    pub w_scaled: bool,
    pub parts: usize,
    pub bias: bool,
    pub residual: bool,
    /// `silu`, `gelu`, `gelu_tanh` or none.
    pub activation: Option<String>,
}

/// Params: `y` (f32 `[rows, n]`), then the activations (`codes`, `exps` for
/// MXFP4, else `x` f32), `w0..` (packed bytes per part), [`lut` (HiF8's
/// 256-entry decode table)], [`bias`],
/// [`res`], `k`, `nb` (blocks per row), `n`, `n0..` (rows per part).
/// Item = row·n + j.
pub fn dot(name: &str, s: &DotSpec) -> Result<Kernel, String> {
    let f64t = Ty::F64;
    let i32t = Ty::I32;
    let mut params = vec![("y".to_string(), Param::Buf(Ty::F32))];
    if s.a_mxfp4 {
        if !matches!(s.wformat, Format::Mxfp4(_)) {
            return Err(format!(
                "MXFP4 activations with {} weights have no GPU kernel",
                s.wformat.name()
            ));
        }
        params.push(("codes".to_string(), Param::Buf(Ty::I8)));
        params.push(("exps".to_string(), Param::Buf(i32t)));
    } else if s.a_hif4 {
        if !matches!(s.wformat, Format::Hif4(_)) {
            return Err(format!(
                "HiF4 activations with {} weights have no GPU kernel",
                s.wformat.name()
            ));
        }
        params.push(("codes".to_string(), Param::Buf(Ty::I8)));
        params.push(("scales".to_string(), Param::Buf(Ty::F32)));
    } else if s.a_hif8 {
        if !matches!(s.wformat, Format::Hif8(_)) {
            return Err(format!(
                "HiF8 activations with {} weights have no GPU kernel",
                s.wformat.name()
            ));
        }
        params.push(("codes".to_string(), Param::Buf(Ty::I8)));
        if s.a_scaled {
            params.push(("aexps".to_string(), Param::Buf(i32t)));
        }
    } else {
        params.push(("x".to_string(), Param::Buf(Ty::F32)));
    }
    for p in 0..s.parts {
        params.push((format!("w{p}"), Param::Buf(Ty::I8)));
    }
    if s.w_scaled {
        for p in 0..s.parts {
            params.push((format!("we{p}"), Param::Buf(i32t)));
        }
    }
    if matches!(s.wformat, Format::Hif8(_)) {
        params.push(("lut".to_string(), Param::Buf(Ty::F32)));
    }
    if s.bias {
        params.push(("bias".to_string(), Param::Buf(Ty::F32)));
    }
    if s.residual {
        params.push(("res".to_string(), Param::Buf(Ty::F32)));
    }
    for p in ["k", "nb", "n"] {
        params.push((p.to_string(), Param::Index));
    }
    for p in 0..s.parts {
        params.push((format!("n{p}"), Param::Index));
    }
    let bpb = s.wformat.block_bytes();
    let bl = s.wformat.block_len();
    let mut b = B::new();
    let row = b.bin("divui", "%i", "%n", X);
    let col = b.bin("remui", "%i", "%n", X);
    let c0 = b.index(0);
    let c1 = b.index(1);
    let zero = b.f64(0.0);
    // The part holding `col`: the kernel sums each part's contribution,
    // only the owning part's loop runs (the others have zero trips).
    let mut acc = zero.clone();
    let mut start = c0.clone();
    for p in 0..s.parts {
        let np = format!("%n{p}");
        let end = b.bin("addi", &start, &np, X);
        let ge = b.cmpi("uge", &col, &start, X);
        let lt = b.cmpi("ult", &col, &end, X);
        let mine = b.bin("andi", &ge, &lt, Ty::I1);
        let trips = b.select(&mine, "%nb", &c0, X);
        let wrow = b.bin("subi", &col, &start, X);
        let wrow = b.select(&mine, &wrow, &c0, X);
        let w = format!("%w{p}");
        let bpbv = b.index(bpb as i64);
        let nbb = b.bin("muli", "%nb", &bpbv, X);
        let rbase = b.bin("muli", &wrow, &nbb, X);
        // The weight row's exponent (scaled HiF8): W·2^-e.
        let wexp = if s.w_scaled {
            let e = b.load(&format!("%we{p}"), &wrow, i32t);
            Some(e)
        } else {
            None
        };
        let r = b.for_(&c0, &trips, &c1, &[(&acc, f64t)], |b, blk, a| {
            let wb0 = b.index(bpb as i64);
            let wbo = b.bin("muli", blk, &wb0, X);
            let wb = b.bin("addi", &rbase, &wbo, X);
            let part = block(b, s, (&w, &wb, wexp.as_deref()), &row, blk, bl);
            vec![b.bin("addf", &a[0], &part, f64t)]
        });
        acc = r[0].clone();
        start = end;
    }
    if s.bias {
        let bv = b.load("%bias", &col, Ty::F32);
        let bw = b.cast("extf", &bv, Ty::F32, f64t);
        acc = b.bin("addf", &acc, &bw, f64t);
    }
    let mut y = b.cast("truncf", &acc, f64t, Ty::F32);
    y = match s.activation.as_deref() {
        None => y,
        Some(a @ ("silu" | "gelu" | "gelu_tanh")) => {
            let op = match a {
                "silu" => "lpc.silu",
                _ => "lpc.gelu",
            };
            super::elementwise::apply_unary(&mut b, op, &y, a == "gelu_tanh")?
        }
        Some(a) => return Err(format!("unknown epilogue activation `{a}`")),
    };
    if s.residual {
        let rv = b.load("%res", "%i", Ty::F32);
        y = b.bin("addf", &y, &rv, Ty::F32);
    }
    b.store(&y, "%y", "%i", Ty::F32);
    Ok(Kernel {
        name: name.into(),
        params,
        body: b.finish(),
    })
}

/// The f64 contribution of block `blk` of activation row `row` with the
/// weight block at byte `wb` of buffer `w`.
fn block(
    b: &mut B,
    s: &DotSpec,
    (w, wb, wexp): (&str, &str, Option<&str>),
    row: &str,
    blk: &str,
    bl: usize,
) -> String {
    let i32t = Ty::I32;
    let f64t = Ty::F64;
    let c0 = b.index(0);
    let c1 = b.index(1);
    let cbl = b.index(bl as i64);
    let k0 = b.bin("muli", blk, &cbl, X);
    if s.a_mxfp4 {
        // Exact integer sum of 2·E2M1 products, times 2^(Ea + Ew - 256).
        let wsb = b.load(w, wb, Ty::I8);
        let ws = b.cast("extui", &wsb, Ty::I8, i32t);
        let ai = {
            let r = b.bin("muli", row, "%nb", X);
            b.bin("addi", &r, blk, X)
        };
        let ea = b.load("%exps", &ai, i32t);
        let cbase = b.bin("muli", &ai, &cbl, X);
        let z = b.int(0, i32t);
        let sum = b.for_(&c0, &cbl, &c1, &[(&z, i32t)], |b, e, a| {
            let wv = mxfp4_x2(b, w, wb, e);
            let ca = b.bin("addi", &cbase, e, X);
            let av = b.load("%codes", &ca, Ty::I8);
            let avi = b.cast("extsi", &av, Ty::I8, i32t);
            let p = b.bin("muli", &avi, &wv, i32t);
            vec![b.bin("addi", &a[0], &p, i32t)]
        });
        let sf = b.cast("sitofp", &sum[0], i32t, f64t);
        // 2^(ea + ew - 256) as f64 bits: exponent field ea + ew - 256 + 1023.
        let es = b.bin("addi", &ea, &ws, i32t);
        let sc = pow2_f64(b, &es, 1023 - 256);
        let prod = b.bin("mulf", &sf, &sc, f64t);
        let ff = b.int(255, i32t);
        let pa = b.cmpi("eq", &ea, &ff, i32t);
        let pw = b.cmpi("eq", &ws, &ff, i32t);
        let poison = b.bin("ori", &pa, &pw, Ty::I1);
        let nan = b.f64(f64::NAN);
        b.select(&poison, &nan, &prod, f64t)
    } else if s.a_hif4 {
        // Exact integer sum of code products times S_A · S_W / 16 (§3.6).
        let r = b.bin("muli", row, "%nb", X);
        let ai = b.bin("addi", &r, blk, X);
        let cbase = b.bin("muli", &ai, &cbl, X);
        let z = b.int(0, i32t);
        let sum = b.for_(&c0, &cbl, &c1, &[(&z, i32t)], |b, e, a| {
            let wv = hif4_int_code(b, w, wb, e);
            let ca = b.bin("addi", &cbase, e, X);
            let av = b.load("%codes", &ca, Ty::I8);
            let avi = b.cast("extsi", &av, Ty::I8, i32t);
            let p = b.bin("muli", &avi, &wv, i32t);
            vec![b.bin("addi", &a[0], &p, i32t)]
        });
        let sf = b.cast("sitofp", &sum[0], i32t, f64t);
        let sa = b.load("%scales", &ai, Ty::F32);
        let saw = b.cast("extf", &sa, Ty::F32, f64t);
        let sw = hif4_scale(b, w, wb);
        let t1 = b.bin("mulf", &sf, &saw, f64t);
        let t2 = b.bin("mulf", &t1, &sw, f64t);
        let sixteenth = b.f64(0.0625);
        b.bin("mulf", &t2, &sixteenth, f64t)
    } else if s.a_hif8 {
        // One element per block: both codes decoded exactly (and unscaled
        // by their rows' powers of two, in f32 as the interpreter does), the
        // product exact in f64.
        let r = b.bin("muli", row, "%k", X);
        let ai = b.bin("addi", &r, blk, X);
        let code = b.load("%codes", &ai, Ty::I8);
        let ci = b.cast("extui", &code, Ty::I8, i32t);
        let cx = b.cast("index_cast", &ci, i32t, X);
        let mut xv = b.load("%lut", &cx, Ty::F32);
        if s.a_scaled {
            let e = b.load("%aexps", row, i32t);
            let z = b.int(0, i32t);
            let ne = b.bin("subi", &z, &e, i32t);
            let p2 = pow2_f32(b, &ne);
            xv = b.bin("mulf", &xv, &p2, Ty::F32);
        }
        let xw = b.cast("extf", &xv, Ty::F32, f64t);
        let c0 = b.index(0);
        let wv = decode_weight(b, s.wformat, w, wb, &c0, wexp);
        b.bin("mulf", &xw, &wv, f64t)
    } else {
        // Weight-only: f32 activations times the decoded weights, exact
        // products summed in f64 in K order; elements past k are skipped.
        let rem = b.bin("subi", "%k", &k0, X);
        let lim = b.bin("minui", &rem, &cbl, X);
        let rb = b.bin("muli", row, "%k", X);
        let z = b.f64(0.0);
        let r = b.for_(&c0, &lim, &c1, &[(&z, f64t)], |b, e, a| {
            let kk = b.bin("addi", &k0, e, X);
            let xa = b.bin("addi", &rb, &kk, X);
            let xv = b.load("%x", &xa, Ty::F32);
            let xw = b.cast("extf", &xv, Ty::F32, f64t);
            let wv = decode_weight(b, s.wformat, w, wb, e, wexp);
            let p = b.bin("mulf", &xw, &wv, f64t);
            vec![b.bin("addf", &a[0], &p, f64t)]
        });
        r[0].clone()
    }
}

/// Element `e` of the packed weight block at byte `wb`, as f64.
fn decode_weight(b: &mut B, f: Format, w: &str, wb: &str, e: &str, wexp: Option<&str>) -> String {
    let i32t = Ty::I32;
    let f64t = Ty::F64;
    match f {
        Format::Mxfp4(_) => {
            let sb = b.load(w, wb, Ty::I8);
            let scale = b.cast("extui", &sb, Ty::I8, i32t);
            let v = mxfp4_x2(b, w, wb, e);
            let vf = b.cast("sitofp", &v, i32t, f64t);
            // value = (2·E2M1 / 2) · 2^(scale - 127) = v · 2^(scale - 128).
            let sc = pow2_f64(b, &scale, 1023 - 128);
            let val = b.bin("mulf", &vf, &sc, f64t);
            let ff = b.int(255, i32t);
            let p = b.cmpi("eq", &scale, &ff, i32t);
            let nan = b.f64(f64::NAN);
            b.select(&p, &nan, &val, f64t)
        }
        Format::Hif4(_) => {
            // The integer code ±(c << (E1_8 + E1_16)) of SPEC §3.6 times
            // S/4 (the S1P2 magnitude is c/4), as f64.
            let v = hif4_int_code(b, w, wb, e);
            let vf = b.cast("sitofp", &v, i32t, f64t);
            let sc = hif4_scale(b, w, wb);
            let quarter = b.f64(0.25);
            let v4 = b.bin("mulf", &vf, &quarter, f64t);
            b.bin("mulf", &v4, &sc, f64t)
        }
        Format::Hif8(_) => {
            // HiF8 codes decode through the runtime's table (`lut`, 256
            // exact f32 values, passed by the host).
            let byte = {
                let a = b.bin("addi", wb, e, X);
                b.load(w, &a, Ty::I8)
            };
            let bi = b.cast("extui", &byte, Ty::I8, Ty::I32);
            let idx = b.cast("index_cast", &bi, Ty::I32, X);
            let mut v = b.load("%lut", &idx, Ty::F32);
            if let Some(ex) = wexp {
                let z = b.int(0, i32t);
                let ne = b.bin("subi", &z, ex, i32t);
                let p2 = pow2_f32(b, &ne);
                v = b.bin("mulf", &v, &p2, Ty::F32);
            }
            b.cast("extf", &v, Ty::F32, f64t)
        }
    }
}
