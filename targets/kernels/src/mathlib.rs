//! Transcendental functions as MLIR functions in `arith` only, in f64.
//!
//! The NVVM lowering turns `math.exp`, `math.sin`, ... into calls of
//! libdevice's `__nv_*` functions, which only a CUDA toolkit provides; lpc
//! needs none, so kernels call these instead (argument reduction plus
//! polynomials, accurate to a few f64 ulps, so every f32 result is within
//! one f32 ulp of the correctly rounded one). The same functions run in the
//! host module, where the emulator tests them.

use crate::mlir::{Ty, B};

const F: Ty = Ty::F64;

fn func(name: &str, body: impl FnOnce(&mut B, &str) -> String) -> String {
    let mut b = B::new();
    let r = body(&mut b, "%x");
    b.line(format!("return {r} : f64"));
    format!(
        "  func.func private @{name}(%x: f64) -> f64 {{\n{}  }}\n",
        b.finish()
    )
}

/// `2^k` for an i64 `k` in [-1074, 1024] as the product of two normal powers.
fn pow2(b: &mut B, k: &str) -> (String, String) {
    let one = b.int(1, Ty::I64);
    let k1 = b.bin("shrsi", k, &one, Ty::I64);
    let k2 = b.bin("subi", k, &k1, Ty::I64);
    let mut p = |k: &str| {
        let bias = b.int(1023, Ty::I64);
        let e = b.bin("addi", k, &bias, Ty::I64);
        let sh = b.int(52, Ty::I64);
        let bits = b.bin("shli", &e, &sh, Ty::I64);
        b.bitcast(&bits, Ty::I64, F)
    };
    let a = p(&k1);
    let c = p(&k2);
    (a, c)
}

/// Horner evaluation of `Σ c_i t^i`.
fn horner(b: &mut B, t: &str, coeffs: &[f64]) -> String {
    let mut acc = b.f64(*coeffs.last().expect("coefficients"));
    for &c in coeffs.iter().rev().skip(1) {
        let m = b.bin("mulf", &acc, t, F);
        let cc = b.f64(c);
        acc = b.bin("addf", &m, &cc, F);
    }
    acc
}

/// Round to the nearest integer (halves away from zero) as i64.
fn round_i64(b: &mut B, x: &str) -> String {
    let half = b.f64(0.5);
    let zero = b.f64(0.0);
    let neg = b.cmpf("olt", x, &zero, F);
    let mhalf = b.f64(-0.5);
    let h = b.select(&neg, &mhalf, &half, F);
    let y = b.bin("addf", x, &h, F);
    b.cast("fptosi", &y, F, Ty::I64)
}

fn exp(b: &mut B, x: &str) -> String {
    // Clamp so that k stays in range; NaN passes through both selects.
    let hi = b.f64(710.0);
    let lo = b.f64(-746.0);
    let gt = b.cmpf("ogt", x, &hi, F);
    let x1 = b.select(&gt, &hi, x, F);
    let lt = b.cmpf("olt", &x1, &lo, F);
    let x2 = b.select(&lt, &lo, &x1, F);
    let l2e = b.f64(std::f64::consts::LOG2_E);
    let t = b.bin("mulf", &x2, &l2e, F);
    let k = round_i64(b, &t);
    let kf = b.cast("sitofp", &k, Ty::I64, F);
    // ln 2 in two parts (fdlibm's; ln2_hi has 32 significant bits).
    let ln2_hi = b.f64(f64::from_bits(0x3FE6_2E42_FEE0_0000));
    let ln2_lo = b.f64(f64::from_bits(0x3DEA_39EF_3579_3C76));
    let a = b.bin("mulf", &kf, &ln2_hi, F);
    let r0 = b.bin("subf", &x2, &a, F);
    let c = b.bin("mulf", &kf, &ln2_lo, F);
    let r = b.bin("subf", &r0, &c, F);
    let mut coeffs = vec![1.0f64];
    let mut f = 1.0f64;
    for i in 1..=14 {
        f *= i as f64;
        coeffs.push(1.0 / f);
    }
    let p = horner(b, &r, &coeffs);
    let (s1, s2) = pow2(b, &k);
    let y = b.bin("mulf", &p, &s1, F);
    b.bin("mulf", &y, &s2, F)
}

/// sin (`cos = false`) or cos of `x`: reduction by π/2 in three parts
/// (fdlibm's pio2_1, pio2_2, pio2_2t), then
/// Taylor polynomials on [-π/4, π/4] chosen by the quadrant.
fn sincos(b: &mut B, x: &str, cos: bool) -> String {
    let inv = b.f64(std::f64::consts::FRAC_2_PI);
    let t = b.bin("mulf", x, &inv, F);
    let k = round_i64(b, &t);
    let kf = b.cast("sitofp", &k, Ty::I64, F);
    let mut r = x.to_string();
    for c in [
        f64::from_bits(0x3FF9_21FB_5440_0000),
        f64::from_bits(0x3DD0_B461_1A60_0000),
        f64::from_bits(0x3BA3_198A_2E03_7073),
    ] {
        let cc = b.f64(c);
        let m = b.bin("mulf", &kf, &cc, F);
        r = b.bin("subf", &r, &m, F);
    }
    let r2 = b.bin("mulf", &r, &r, F);
    // sin r = r · Σ (-1)^i r^2i / (2i+1)!, cos r = Σ (-1)^i r^2i / (2i)!.
    let (mut sc, mut cc) = (Vec::new(), Vec::new());
    let mut f = 1.0f64;
    for i in 0..10 {
        if i > 0 {
            f *= (2 * i) as f64;
        }
        let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
        cc.push(sign / f);
        sc.push(sign / (f * (2 * i + 1) as f64));
        f *= (2 * i + 1) as f64;
    }
    let sp = horner(b, &r2, &sc);
    let s = b.bin("mulf", &sp, &r, F);
    let c = horner(b, &r2, &cc);
    let three = b.int(3, Ty::I64);
    let q0 = b.bin("andi", &k, &three, Ty::I64);
    let q = if cos {
        let one = b.int(1, Ty::I64);
        let q1 = b.bin("addi", &q0, &one, Ty::I64);
        b.bin("andi", &q1, &three, Ty::I64)
    } else {
        q0
    };
    // Quadrant q of sin: s, c, -s, -c.
    let one = b.int(1, Ty::I64);
    let two = b.int(2, Ty::I64);
    let odd_bit = b.bin("andi", &q, &one, Ty::I64);
    let zero = b.int(0, Ty::I64);
    let odd = b.cmpi("ne", &odd_bit, &zero, Ty::I64);
    let v = b.select(&odd, &c, &s, F);
    let neg_bit = b.bin("andi", &q, &two, Ty::I64);
    let neg = b.cmpi("ne", &neg_bit, &zero, Ty::I64);
    let nv = b.op(format!("arith.negf {v} : f64"));
    let y = b.select(&neg, &nv, &v, F);
    // Outside the reduction's range (and for inf/NaN): NaN.
    let ax = b.absf(x, F);
    let lim = b.f64(1e15);
    let ok = b.cmpf("olt", &ax, &lim, F);
    let nan = b.f64(f64::NAN);
    b.select(&ok, &y, &nan, F)
}

fn tanh(b: &mut B, x: &str) -> String {
    let ax = b.absf(x, F);
    let two = b.f64(2.0);
    let t2 = b.bin("mulf", &ax, &two, F);
    let e = b.call("lpc_exp", &[(&t2, F)], Some(F)).expect("result");
    let one = b.f64(1.0);
    let num = b.bin("subf", &e, &one, F);
    let den = b.bin("addf", &e, &one, F);
    let y = b.bin("divf", &num, &den, F);
    let big = b.f64(22.0);
    let sat = b.cmpf("ogt", &ax, &big, F);
    let y = b.select(&sat, &one, &y, F);
    b.copysign(&y, x, F)
}

/// erf by Abramowitz-Stegun 7.1.26, the interpreter's formula.
fn erf(b: &mut B, x: &str) -> String {
    let a = b.absf(x, F);
    let p = b.f64(0.327_591_1);
    let one = b.f64(1.0);
    let pa = b.bin("mulf", &p, &a, F);
    let d = b.bin("addf", &one, &pa, F);
    let t = b.bin("divf", &one, &d, F);
    let poly = horner(
        b,
        &t,
        &[
            0.0,
            0.254_829_592,
            -0.284_496_736,
            1.421_413_741,
            -1.453_152_027,
            1.061_405_429,
        ],
    );
    let a2 = b.bin("mulf", &a, &a, F);
    let na2 = b.op(format!("arith.negf {a2} : f64"));
    let e = b.call("lpc_exp", &[(&na2, F)], Some(F)).expect("result");
    let pe = b.bin("mulf", &poly, &e, F);
    let y = b.bin("subf", &one, &pe, F);
    b.copysign(&y, x, F)
}

/// sqrt (`f32`/`f64`), floor and ceil (`f32`): LLVM intrinsics on the host;
/// on the device the NVVM intrinsics (the NVVM lowering marks the generic
/// ones illegal, to turn them into libdevice calls).
fn rounding_ops(device: bool) -> String {
    let mut s = String::new();
    for (name, op, t, nv) in [
        ("lpc_sqrtf", "sqrt", "f32", "llvm.nvvm.sqrt.rn.f"),
        ("lpc_sqrt", "sqrt", "f64", "llvm.nvvm.sqrt.rn.d"),
        ("lpc_floorf", "floor", "f32", "llvm.nvvm.floor.f"),
        ("lpc_ceilf", "ceil", "f32", "llvm.nvvm.ceil.f"),
    ] {
        let body = if device {
            format!("llvm.call_intrinsic \"{nv}\"(%x) : ({t}) -> {t}")
        } else {
            format!("llvm.intr.{op}(%x) : ({t}) -> {t}")
        };
        s.push_str(&format!(
            "  func.func private @{name}(%x: {t}) -> {t} {{\n    %r = {body}\n    return %r : {t}\n  }}\n"
        ));
    }
    s
}

/// The MLIR source of every function, for inclusion in a device (`true`)
/// or host module.
pub fn source(device: bool) -> String {
    let mut s = rounding_ops(device);
    s.push_str(&func("lpc_exp", exp));
    s.push_str(&func("lpc_sin", |b, x| sincos(b, x, false)));
    s.push_str(&func("lpc_cos", |b, x| sincos(b, x, true)));
    s.push_str(&func("lpc_tanh", tanh));
    s.push_str(&func("lpc_erf", erf));
    s
}
