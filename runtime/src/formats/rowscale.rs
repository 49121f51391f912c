//! Power-of-two row scales for HiFloat8 ("scaled HiF8").
//!
//! HiF8 has 3 mantissa bits only for |exponent| <= 3; typical weights
//! (|w| ~ 0.02) fall in its 2-bit binades. Scaling each row (an output
//! channel of a weight, a token of an activation) by `2^e` so that its amax
//! lands in [8, 16), HiF8's top 3-bit binade, and multiplying the GEMM result
//! by `2^-e` afterwards, is exact arithmetic and raises the SQNR at no cost.

use super::bits::{lg, pow2};
use super::AxisLayout;

/// The exponent that puts `amax · 2^e` into [8, 16); 0 for zero or
/// non-finite rows. Clamped to the exponents `pow2` can build.
pub fn hif8_exponent(amax: f32) -> i32 {
    if !(amax.is_finite() && amax > 0.0) {
        return 0;
    }
    (3 - lg(amax)).clamp(-126, 127)
}

fn for_row(l: &AxisLayout, r: usize, mut f: impl FnMut(usize)) {
    let (o, i) = (r / l.inner, r % l.inner);
    for k in 0..l.axis_len {
        f((o * l.axis_len + k) * l.inner + i);
    }
}

/// Scales each row of `x` (rows as in [`AxisLayout`]) by its own `2^e` in
/// place; returns the exponents, one per row.
pub fn scale_rows(x: &mut [f32], l: &AxisLayout) -> Vec<i32> {
    if l.inner == 1 && l.axis_len > 0 {
        return scale_contiguous_dispatch(&mut x[..l.rows() * l.axis_len], l.axis_len);
    }
    (0..l.rows())
        .map(|r| {
            let mut amax = 0f32;
            for_row(l, r, |i| amax = amax.max(x[i].abs()));
            let e = hif8_exponent(amax);
            let s = pow2(e);
            for_row(l, r, |i| x[i] *= s);
            e
        })
        .collect()
}

/// [`scale_rows`] of contiguous rows of `k`, compiled for the best
/// instruction set this CPU has (the same results on every path).
fn scale_contiguous_dispatch(x: &mut [f32], k: usize) -> Vec<i32> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx2") {
            // SAFETY: the CPU has every feature the function is compiled for.
            return unsafe { scale_contiguous_avx512(x, k) };
        }
        if has!("avx2") {
            // SAFETY: as above.
            return unsafe { scale_contiguous_avx2(x, k) };
        }
    }
    scale_contiguous(x, k)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
unsafe fn scale_contiguous_avx512(x: &mut [f32], k: usize) -> Vec<i32> {
    scale_contiguous(x, k)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn scale_contiguous_avx2(x: &mut [f32], k: usize) -> Vec<i32> {
    scale_contiguous(x, k)
}

/// Rows of `k` in place. The amax is the largest magnitude bit pattern
/// that is not NaN (the order of non-negative floats; NaN is skipped, as
/// `f32::max` skips it): integer lanes, which vectorize. Plain loops: a
/// closure handed to `collect` would be compiled inside the standard
/// library's generic `from_iter`, without the caller's target features.
#[inline(always)]
fn scale_contiguous(x: &mut [f32], k: usize) -> Vec<i32> {
    let mut exps = Vec::with_capacity(x.len() / k.max(1));
    for row in x.chunks_exact_mut(k) {
        let mut amax = 0u32;
        for v in row.iter() {
            let b = v.to_bits() & 0x7FFF_FFFF;
            amax = amax.max(if b > 0x7F80_0000 { 0 } else { b });
        }
        let e = hif8_exponent(f32::from_bits(amax));
        let s = pow2(e);
        for v in row.iter_mut() {
            *v *= s;
        }
        exps.push(e);
    }
    exps
}

/// Multiplies each row of `y` by `2^-e` (the inverse of [`scale_rows`]).
pub fn unscale_rows(y: &mut [f32], l: &AxisLayout, e: &[i32]) {
    for (r, &er) in e.iter().enumerate() {
        let s = pow2(-er);
        for_row(l, r, |i| y[i] *= s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn puts_amax_in_the_top_binade() {
        for amax in [0.02f32, 1.0, 7.99, 8.0, 15.99, 16.0, 1e-30, 3e38] {
            let e = hif8_exponent(amax);
            let s = amax * pow2(e);
            assert!((8.0..16.0).contains(&s), "{amax}: {s}");
        }
        assert_eq!(hif8_exponent(0.0), 0);
        assert_eq!(hif8_exponent(f32::NAN), 0);
    }

    #[test]
    fn contiguous_rows_match_the_general_path() {
        // NaN is skipped, infinity gives exponent 0, as in the strided path.
        let k = 37;
        let mut x: Vec<f32> = (0..5 * k)
            .map(|i| ((i * 7919) % 1000) as f32 * 0.013 - 6.0)
            .collect();
        x[3] = f32::NAN;
        x[k + 5] = f32::INFINITY;
        x[2 * k + 1] = -0.0;
        for v in &mut x[3 * k..4 * k] {
            *v = 0.0;
        }
        x[4 * k + 2] = f32::NAN;
        let l = AxisLayout::new(&[5, k], 1, 1);
        // The general path: the same rows as a column-major view.
        let mut t: Vec<f32> = (0..5 * k).map(|i| x[(i % 5) * k + i / 5]).collect();
        let lt = AxisLayout::new(&[k, 5], 0, 1);
        let mut c = x.clone();
        let ec = scale_rows(&mut c, &l);
        let et = scale_rows(&mut t, &lt);
        assert_eq!(ec, et);
        for i in 0..5 * k {
            let (a, b) = (c[(i % 5) * k + i / 5], t[i]);
            assert!(
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                "{i}"
            );
        }
        assert_eq!(ec[1], 0);
        assert_eq!(ec[3], 0);
    }

    #[test]
    fn rows_along_any_axis() {
        let l = AxisLayout::new(&[2, 3], 0, 1);
        let mut x = vec![0.5, 100.0, 0.0, -0.25, 1.0, 0.0];
        let e = scale_rows(&mut x, &l);
        assert_eq!(e, vec![4, -3, 0]);
        assert_eq!(x, vec![8.0, 12.5, 0.0, -4.0, 0.125, 0.0]);
        unscale_rows(&mut x, &l, &e);
        assert_eq!(x, vec![0.5, 100.0, 0.0, -0.25, 1.0, 0.0]);
    }
}
