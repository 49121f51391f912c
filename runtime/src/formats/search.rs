//! Scale search for 4-bit weights (`--scale-search`): per block, try the
//! spec's scale and its neighbours and keep the valid encoding with the least
//! squared error. Used on weights at compile time; activations keep the
//! spec's rule.
//!
//! - MXFP4: E8M0 exponents E-1, E, E+1 around the spec's E.
//! - HiF4: E6M2 codes b-1, b, b+1 around the spec's b, and for each the
//!   micro-exponent choices: every E1_8 bit with, for each of its two
//!   subgroups, the better E1_16 bit (groups and subgroups are independent
//!   once the scale is fixed).
//!
//! Elements are always encoded by the spec's element rule for the chosen
//! scale and micro-exponents, so the result decodes with the ordinary decoder.
//!
//! The error is plain squared error, or with `importance` (one non-negative
//! weight per element, e.g. the mean square of the activation each weight
//! multiplies) `sum importance_i (x_i - q_i)^2`: the expected squared error of
//! the layer's output, to first order with the input channels taken as
//! uncorrelated (the diagonal of GPTQ's Hessian).

use super::bits::{bf16_round, non_finite, pow2};
use super::hif4::{e6m2_to_f32, Hif4Unit, Hif4Variant, S1P2_VALUES};
use super::mxfp4::{Mxfp4Block, Mxfp4Rounding};
use super::{BlockFormat, Hif4, Mxfp4};

fn sse(x: &[f32], y: &[f32], importance: &[f32]) -> f64 {
    x.iter()
        .zip(y)
        .zip(importance)
        .map(|((&a, &b), &w)| w as f64 * (a as f64 - b as f64).powi(2))
        .sum()
}

/// The importance of each of a block's `N` elements: `importance`
/// zero-padded, or all ones.
fn weights<const N: usize>(importance: Option<&[f32]>, len: usize) -> [f32; N] {
    match importance {
        Some(w) => {
            let mut v = [0f32; N];
            let n = len.min(w.len()).min(N);
            v[..n].copy_from_slice(&w[..n]);
            v
        }
        None => [1.0; N],
    }
}

fn full<const N: usize>(x: &[f32]) -> [f32; N] {
    let mut v = [0f32; N];
    v[..x.len()].copy_from_slice(x);
    v
}

/// MXFP4 with the best of the three E8M0 exponents around the spec's.
pub fn mxfp4_block(x: &[f32], mode: Mxfp4Rounding) -> Mxfp4Block {
    mxfp4_block_weighted(x, mode, None)
}

/// [`mxfp4_block`] by the error weighted with `importance` (per element).
pub fn mxfp4_block_weighted(
    x: &[f32],
    mode: Mxfp4Rounding,
    importance: Option<&[f32]>,
) -> Mxfp4Block {
    let spec = Mxfp4::quantize_block(x, mode);
    if spec.scale == 0xFF {
        return spec;
    }
    let v: [f32; 32] = full(x);
    let w: [f32; 32] = weights(importance, x.len());
    let mut best = spec;
    let mut y = [0f32; 32];
    Mxfp4::dequantize_block(&spec, &mut y);
    let mut best_err = sse(&v, &y, &w);
    for e in [spec.scale as i32 - 1, spec.scale as i32 + 1] {
        if !(0..=254).contains(&e) {
            continue;
        }
        let inv = pow2(127 - e);
        let mut b = Mxfp4Block {
            scale: e as u8,
            data: [0; 16],
        };
        for (i, &xi) in v.iter().enumerate() {
            let r = xi.abs() * inv;
            let c = ((xi.to_bits() >> 31) as u8) << 3 | super::mxfp4::encode_e2m1(r, mode) & 7;
            b.data[i / 2] |= c << (4 * (i % 2));
        }
        Mxfp4::dequantize_block(&b, &mut y);
        let err = sse(&v, &y, &w);
        if err < best_err {
            best_err = err;
            best = b;
        }
    }
    best
}

/// The element code of magnitude `a` for reciprocal `rec` and micro-exponent
/// sum `d`, by the spec's rule (§3.4 step 8).
fn hif4_code(a: f32, rec: f32, d: u32, variant: Hif4Variant) -> u8 {
    let m = a * rec;
    let y = match variant {
        Hif4Variant::Consortium => m * f32::from_bits((129 - d) << 23) + 0.5,
        Hif4Variant::Amct => 4.0 * bf16_round(m * f32::from_bits((127 - d) << 23)) + 0.5,
    };
    (y.min(8.0) as u8).min(7)
}

/// HiF4 with the best of the three E6M2 codes around the spec's, each with
/// its best micro-exponents.
pub fn hif4_unit(x: &[f32], variant: Hif4Variant) -> Hif4Unit {
    hif4_unit_weighted(x, variant, None)
}

/// [`hif4_unit`] by the error weighted with `importance` (per element).
pub fn hif4_unit_weighted(x: &[f32], variant: Hif4Variant, importance: Option<&[f32]>) -> Hif4Unit {
    let spec = Hif4::quantize_block(x, variant);
    if spec.meta[0] == 0xFF {
        return spec;
    }
    let v: [f32; 64] = full(x);
    let w: [f32; 64] = weights(importance, x.len());
    let mut y = [0f32; 64];
    Hif4::dequantize_block(&spec, &mut y);
    let (mut best, mut best_err) = (spec, sse(&v, &y, &w));
    for b in [
        spec.meta[0] as i32 - 1,
        spec.meta[0] as i32,
        spec.meta[0] as i32 + 1,
    ] {
        if !(0..=0xFE).contains(&b) {
            continue;
        }
        let s = e6m2_to_f32(b as u8);
        let rec = bf16_round(1.0 / s);
        let mut unit = Hif4Unit {
            meta: [b as u8, 0, 0, 0],
            data: [0; 32],
        };
        let mut total = 0f64;
        let mut nib = [0u8; 64];
        for g in 0..8 {
            // For each E1_8 choice, each subgroup takes its better E1_16.
            let mut best_g: Option<(f64, u8, [u8; 2], [u8; 8])> = None;
            for e8 in 0..2u8 {
                let (mut err_g, mut e16s, mut codes) = (0f64, [0u8; 2], [0u8; 8]);
                for (j, h) in [2 * g, 2 * g + 1].into_iter().enumerate() {
                    let mut best_h: Option<(f64, u8, [u8; 4])> = None;
                    for e16 in 0..2u8 {
                        let d = (e8 + e16) as u32;
                        let mut err = 0f64;
                        let mut cs = [0u8; 4];
                        for t in 0..4 {
                            let i = 4 * h + t;
                            let c = hif4_code(v[i].abs(), rec, d, variant);
                            let val = S1P2_VALUES[c as usize] * pow2(d as i32) * s;
                            err += w[i] as f64 * (v[i].abs() as f64 - val as f64).powi(2);
                            cs[t] = ((v[i] < 0.0) as u8) << 3 | c;
                        }
                        if best_h.is_none_or(|(be, _, _)| err < be) {
                            best_h = Some((err, e16, cs));
                        }
                    }
                    let (err, e16, cs) = best_h.expect("two choices");
                    err_g += err;
                    e16s[j] = e16;
                    codes[4 * j..4 * j + 4].copy_from_slice(&cs);
                }
                if best_g.is_none_or(|(be, ..)| err_g < be) {
                    best_g = Some((err_g, e8, e16s, codes));
                }
            }
            let (err_g, e8, e16s, codes) = best_g.expect("two choices");
            total += err_g;
            unit.meta[1] |= e8 << (7 - g);
            for (j, &e16) in e16s.iter().enumerate() {
                let h = 2 * g + j;
                unit.meta[2 + h / 8] |= e16 << (7 - h % 8);
            }
            nib[8 * g..8 * g + 8].copy_from_slice(&codes);
        }
        for k in 0..32 {
            unit.data[k] = nib[2 * k] | nib[2 * k + 1] << 4;
        }
        if total < best_err {
            best_err = total;
            best = unit;
        }
    }
    best
}

/// Does the block contain a non-finite value (then the spec's poisoning applies)?
pub fn poisoned(x: &[f32]) -> bool {
    x.iter().any(|&v| non_finite(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Roughly Gaussian values (sum of four uniforms).
    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                let mut acc = 0f32;
                for _ in 0..4 {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    acc += (s >> 40) as f32 / (1u64 << 24) as f32;
                }
                (acc - 2.0) * 0.05
            })
            .collect()
    }

    /// Never worse than the spec's encoding, sometimes better, always valid.
    #[test]
    fn search_never_loses_and_sometimes_wins() {
        let (mut mx_wins, mut h4_wins) = (0, 0);
        for seed in 0..200u64 {
            let x = data(64, seed * 7 + 1);
            for mode in [Mxfp4Rounding::Rne, Mxfp4Rounding::TiesAway] {
                let (a, b) = (
                    Mxfp4::quantize_block(&x[..32], mode),
                    mxfp4_block(&x[..32], mode),
                );
                let (mut ya, mut yb) = ([0f32; 32], [0f32; 32]);
                Mxfp4::dequantize_block(&a, &mut ya);
                Mxfp4::dequantize_block(&b, &mut yb);
                let (ea, eb) = (
                    sse(&x[..32], &ya, &[1.0; 32]),
                    sse(&x[..32], &yb, &[1.0; 32]),
                );
                assert!(eb <= ea, "mxfp4 {seed}: {eb} > {ea}");
                mx_wins += (eb < ea) as usize;
            }
            for var in [Hif4Variant::Consortium, Hif4Variant::Amct] {
                let (a, b) = (Hif4::quantize_block(&x, var), hif4_unit(&x, var));
                let (mut ya, mut yb) = ([0f32; 64], [0f32; 64]);
                Hif4::dequantize_block(&a, &mut ya);
                Hif4::dequantize_block(&b, &mut yb);
                let (ea, eb) = (sse(&x, &ya, &[1.0; 64]), sse(&x, &yb, &[1.0; 64]));
                assert!(eb <= ea + 1e-18, "hif4 {seed}: {eb} > {ea}");
                h4_wins += (eb < ea) as usize;
            }
        }
        eprintln!("search beat the spec in {mx_wins}/400 MXFP4 blocks, {h4_wins}/400 HiF4 units");
        assert!(mx_wins > 10 && h4_wins > 10, "{mx_wins} {h4_wins}");
    }

    /// Weighted: never worse than the spec's encoding by the weighted error;
    /// all-ones weights choose exactly what the plain search does; and the
    /// weights change some choices.
    #[test]
    fn weighted_search_minimizes_the_weighted_error() {
        let (mut mx_diff, mut h4_diff) = (0, 0);
        for seed in 0..200u64 {
            let x = data(64, seed * 11 + 5);
            // Importances spanning four decades, like activation powers.
            let w: Vec<f32> = data(64, seed * 13 + 2)
                .iter()
                .map(|v| 10f32.powf(v.abs() * 40.0))
                .collect();
            let mode = Mxfp4Rounding::Rne;
            let spec = Mxfp4::quantize_block(&x[..32], mode);
            let got = mxfp4_block_weighted(&x[..32], mode, Some(&w[..32]));
            let (mut ya, mut yb) = ([0f32; 32], [0f32; 32]);
            Mxfp4::dequantize_block(&spec, &mut ya);
            Mxfp4::dequantize_block(&got, &mut yb);
            assert!(sse(&x[..32], &yb, &w[..32]) <= sse(&x[..32], &ya, &w[..32]));
            assert_eq!(
                mxfp4_block_weighted(&x[..32], mode, Some(&[1.0; 32])),
                mxfp4_block(&x[..32], mode)
            );
            mx_diff += (got != mxfp4_block(&x[..32], mode)) as usize;
            let var = Hif4Variant::Consortium;
            let spec = Hif4::quantize_block(&x, var);
            let got = hif4_unit_weighted(&x, var, Some(&w));
            let (mut ya, mut yb) = ([0f32; 64], [0f32; 64]);
            Hif4::dequantize_block(&spec, &mut ya);
            Hif4::dequantize_block(&got, &mut yb);
            let (ea, eb) = (sse(&x, &ya, &w), sse(&x, &yb, &w));
            assert!(eb <= ea * (1.0 + 1e-12), "hif4 {seed}: {eb} > {ea}");
            assert_eq!(
                hif4_unit_weighted(&x, var, Some(&[1.0; 64])),
                hif4_unit(&x, var)
            );
            h4_diff += (got != hif4_unit(&x, var)) as usize;
        }
        eprintln!("weights changed {mx_diff}/200 MXFP4 and {h4_diff}/200 HiF4 choices");
        assert!(mx_diff > 5 && h4_diff > 5, "{mx_diff} {h4_diff}");
    }

    #[test]
    fn poisoned_blocks_keep_the_spec_encoding() {
        let mut x = data(64, 3);
        x[5] = f32::NAN;
        assert!(poisoned(&x));
        assert_eq!(
            hif4_unit(&x, Hif4Variant::Consortium),
            Hif4::quantize_block(&x, Hif4Variant::Consortium)
        );
        assert_eq!(
            mxfp4_block(&x[..32], Mxfp4Rounding::Rne),
            Mxfp4::quantize_block(&x[..32], Mxfp4Rounding::Rne)
        );
    }
}
