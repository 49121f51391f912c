//! Elementary functions in f32 as one fixed sequence of operations (no
//! table, no branch, fused multiply-adds where written): the reference of
//! the code generators, which emit the very same sequence (vectorized by
//! LLVM) and so agree with it bit for bit. Generated code and the
//! interpreter use these for `Exp`, `Tanh`, `Sigmoid`, SiLU, `Sin` and
//! `Cos`; libm's scalar calls cost a fifth of a small model's run time.

use std::f32::consts::LOG2_E;

/// `ln 2` split for Cody-Waite reduction: `LN2_HI` has 9 significant bits,
/// so `n · LN2_HI` is exact for every `n` the clamp allows.
pub const LN2_HI: f32 = 0.693_359_4;
pub const LN2_LO: f32 = -2.121_944_4e-4;
/// `e^r` on `|r| <= ln2 / 2`: Taylor coefficients `1/k!`, `k` = 7 down to 0
/// (truncation below 0.1 ulp).
pub const EXP_POLY: [f32; 8] = [
    1.0 / 5040.0,
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    0.5,
    1.0,
    1.0,
];
/// The clamp of `exp_f32`'s argument: below, the result rounds to 0; above,
/// it overflows to infinity.
pub const EXP_MIN: f32 = -104.0;
pub const EXP_MAX: f32 = 89.0;
/// `tanh(a) = a + a³ · q(a²)` for `|a| < TANH_SMALL`: odd Taylor terms up to
/// `a⁹` (`q`'s coefficients from `a⁶` down), truncation below 1e-8 relative.
pub const TANH_POLY: [f32; 4] = [62.0 / 2835.0, -17.0 / 315.0, 2.0 / 15.0, -1.0 / 3.0];
pub const TANH_SMALL: f32 = 0.25;

/// `2/π` for the quadrant of `sin_f32` and `cos_f32`.
pub const FRAC_2_PI: f64 = std::f64::consts::FRAC_2_PI;
/// `π/2` in three f64 parts (each the rounding of what the earlier ones
/// leave): `x - k·π/2` by fused multiply-adds, accurate to about 2^-53 for
/// every `|k| < 2^40`.
pub const PIO2: [f64; 3] = [
    std::f64::consts::FRAC_PI_2,
    6.123_233_995_736_766e-17,
    -1.497_384_904_859_169_8e-33,
];
/// `sin r = r + r³ · p(r²)` and `cos r = 1 - r²/2 + r⁴ · q(r²)` on
/// `|r| <= π/4` (Cephes' single-precision minimax coefficients, highest
/// power first): within about 1 ulp.
pub const SIN_POLY: [f32; 3] = [-1.951_529_6e-4, 8.332_161e-3, -1.666_665_5e-1];
pub const COS_POLY: [f32; 3] = [2.443_315_7e-5, -1.388_731_6e-3, 4.166_664_6e-2];
/// `sin_f32` and `cos_f32` are within 2 ulp below this magnitude (2^64);
/// above, their results stay in [-1, 1] but lose accuracy (that needs
/// more bits of 2/π than an f64 has: Payne-Hanek reduction).
pub const TRIG_ACCURATE_BELOW: f32 = 1.844_674_4e19;

/// `x = k·π/2 + r`: `r` (f32, `|r| <= π/4`) and the quadrant `k mod 4` as
/// 0.0 to 3.0 (NaN for an infinite or NaN `x`), in f64 throughout. Above
/// 2^53 the first `k` may miss the nearest multiple by a few: the
/// remainder (still exact to about 2^-53) is reduced once more. Far above
/// 2^64 that is not enough, and `r` is clamped to [-0.8, 0.8] (a bound no
/// accurate remainder reaches) so that results stay in [-1, 1].
fn reduce_pio2(x: f32) -> (f32, f64) {
    let mut r = x as f64;
    let mut q = 0.0;
    for _ in 0..2 {
        let k = (r * FRAC_2_PI).round_ties_even();
        for p in PIO2 {
            r = (-k).mul_add(p, r);
        }
        q += k - 4.0 * (k * 0.25).floor();
    }
    (
        r.clamp(-TRIG_R_MAX, TRIG_R_MAX) as f32,
        q - 4.0 * (q * 0.25).floor(),
    )
}

/// The clamp of `reduce_pio2`'s remainder.
pub const TRIG_R_MAX: f64 = 0.8;

fn sin_poly(r: f32) -> f32 {
    let r2 = r * r;
    let mut p = SIN_POLY[0];
    for &c in &SIN_POLY[1..] {
        p = p.mul_add(r2, c);
    }
    (p * r2).mul_add(r, r)
}

fn cos_poly(r: f32) -> f32 {
    let r2 = r * r;
    let mut p = COS_POLY[0];
    for &c in &COS_POLY[1..] {
        p = p.mul_add(r2, c);
    }
    p = p.mul_add(r2, -0.5);
    p.mul_add(r2, 1.0)
}

/// `sin x`, within 2 ulp for `|x| <` [`TRIG_ACCURATE_BELOW`] (±0 kept);
/// NaN for NaN and `±inf`.
pub fn sin_f32(x: f32) -> f32 {
    let (r, q) = reduce_pio2(x);
    let (s, c) = (sin_poly(r), cos_poly(r));
    let v = if q == 1.0 || q == 3.0 { c } else { s };
    let v = if q >= 2.0 { -v } else { v };
    if x == 0.0 {
        x
    } else {
        v
    }
}

/// `cos x`, within 2 ulp for `|x| <` [`TRIG_ACCURATE_BELOW`]; NaN for NaN
/// and `±inf`.
pub fn cos_f32(x: f32) -> f32 {
    let (r, q) = reduce_pio2(x);
    let (s, c) = (sin_poly(r), cos_poly(r));
    let v = if q == 1.0 || q == 3.0 { s } else { c };
    if q == 1.0 || q == 2.0 {
        -v
    } else {
        v
    }
}

/// `2^e` for `e` in the normal range.
fn pow2i(e: i32) -> f32 {
    f32::from_bits(((e + 127) as u32) << 23)
}

/// `e^x`, within 2 ulp over the whole range (subnormal results included);
/// NaN stays NaN, `±inf` gives `inf` and 0.
pub fn exp_f32(x: f32) -> f32 {
    let c = x.clamp(EXP_MIN, EXP_MAX);
    let n = (c * LOG2_E).round_ties_even();
    let r = n.mul_add(-LN2_HI, c);
    let r = n.mul_add(-LN2_LO, r);
    let mut p = EXP_POLY[0];
    for &k in &EXP_POLY[1..] {
        p = p.mul_add(r, k);
    }
    // 2^n in two factors, each a normal number for n in [-150, 128].
    let ni = n as i32;
    let n1 = ni >> 1;
    let y = p * pow2i(n1) * pow2i(ni - n1);
    if x.is_nan() {
        x
    } else {
        y
    }
}

/// `tanh x`, within 4 ulp: an odd polynomial near 0, else
/// `(1 - e^-2|x|) / (1 + e^-2|x|)` with the sign of `x`.
pub fn tanh_f32(x: f32) -> f32 {
    let a = x.abs();
    let a2 = a * a;
    let mut q = TANH_POLY[0];
    for &k in &TANH_POLY[1..] {
        q = q.mul_add(a2, k);
    }
    let small = (q * a2).mul_add(a, a);
    let t = exp_f32(-2.0 * a);
    let big = (1.0 - t) / (1.0 + t);
    let y = if a < TANH_SMALL { small } else { big };
    y.copysign(x)
}

/// `1 / (1 + e^-x)`.
pub fn sigmoid_f32(x: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-x))
}

/// `x · sigmoid(x)`.
pub fn silu_f32(x: f32) -> f32 {
    x * sigmoid_f32(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units of the last place of the f64 reference.
    fn ulps(got: f32, want: f64) -> f64 {
        let w = want as f32;
        if got == w {
            return 0.0;
        }
        let ulp = (f32::from_bits(w.abs().to_bits() + 1) - w.abs()) as f64;
        (got as f64 - want).abs() / ulp
    }

    /// Every 613th f32 bit pattern (both signs, all exponents).
    fn sweep() -> impl Iterator<Item = f32> {
        (0..u32::MAX / 613).map(|i| f32::from_bits(i * 613))
    }

    #[test]
    fn exp_is_within_2_ulp() {
        let mut worst = 0f64;
        for x in sweep().filter(|x| x.is_finite()) {
            let want = (x as f64).exp();
            let got = exp_f32(x);
            if want > f32::MAX as f64 {
                assert_eq!(got, f32::INFINITY, "{x}");
            } else if want < f32::MIN_POSITIVE as f64 {
                // Subnormal results: within one subnormal step.
                assert!((got as f64 - want).abs() <= 1.5e-45, "{x}: {got} vs {want}");
            } else {
                worst = worst.max(ulps(got, want));
            }
        }
        assert!(worst <= 2.0, "worst {worst} ulp");
        assert!(exp_f32(f32::NAN).is_nan());
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(0.0), 1.0);
    }

    #[test]
    fn tanh_sigmoid_and_silu_are_accurate() {
        let mut worst = 0f64;
        for x in sweep().filter(|x| x.is_finite()) {
            let want = (x as f64).tanh();
            let got = tanh_f32(x);
            if want.abs() >= f32::MIN_POSITIVE as f64 {
                worst = worst.max(ulps(got, want));
            } else {
                assert!((got as f64 - want).abs() <= 1.5e-45, "{x}");
            }
            let s = 1.0 / (1.0 + (-(x as f64)).exp());
            let gs = sigmoid_f32(x) as f64;
            // Below -88.7, e^-x overflows f32 and the result flushes to 0
            // (as 1 / (1 + expf(-x)) does).
            let floor = if x < -88.0 {
                f32::MIN_POSITIVE as f64
            } else {
                0.0
            };
            assert!((gs - s).abs() <= 4e-7 * s + floor, "{x}: {gs} vs {s}");
            // SiLU against x · sigmoid(x) in f64: the sigmoid's error plus
            // one rounding (plus the flush to 0 below -88, scaled by x).
            let gl = silu_f32(x) as f64;
            let wl = x as f64 * s;
            assert!(
                (gl - wl).abs() <= 5e-7 * wl.abs() + floor * (x as f64).abs() + 1.5e-45,
                "silu({x}): {gl} vs {wl}"
            );
        }
        assert!(worst <= 4.0, "worst {worst} ulp");
        assert!(tanh_f32(f32::NAN).is_nan());
        assert_eq!(tanh_f32(f32::INFINITY), 1.0);
        assert_eq!(tanh_f32(f32::NEG_INFINITY), -1.0);
        assert_eq!(tanh_f32(-0.0).to_bits(), (-0.0f32).to_bits());
    }

    #[test]
    fn sin_and_cos_are_within_2_ulp() {
        let mut worst = 0f64;
        use std::f32::consts::{FRAC_PI_2, FRAC_PI_4, PI};
        let edges = [
            1e-30,
            FRAC_PI_4,
            FRAC_PI_2,
            PI,
            3.0 * FRAC_PI_2,
            2.0 * PI,
            1e6 * PI,
        ];
        let xs = sweep().chain(edges.iter().flat_map(|&e| [e, -e]));
        for x in xs.filter(|x| x.is_finite()) {
            let (gs, gc) = (sin_f32(x), cos_f32(x));
            if x.abs() >= TRIG_ACCURATE_BELOW {
                assert!(gs.abs() <= 1.0 + 1e-6 && gc.abs() <= 1.0 + 1e-6, "{x}");
                continue;
            }
            for (got, want) in [(gs, (x as f64).sin()), (gc, (x as f64).cos())] {
                if want.abs() >= f32::MIN_POSITIVE as f64 {
                    worst = worst.max(ulps(got, want));
                } else {
                    assert!((got as f64 - want).abs() <= 1.5e-45, "{x}: {got} vs {want}");
                }
            }
        }
        assert!(worst <= 2.0, "worst {worst} ulp");
        for x in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            assert!(sin_f32(x).is_nan() && cos_f32(x).is_nan(), "{x}");
        }
        assert_eq!(sin_f32(-0.0).to_bits(), (-0.0f32).to_bits());
        assert_eq!(cos_f32(0.0), 1.0);
    }
}
