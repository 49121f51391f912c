//! The block-diagonal Walsh-Hadamard rotation used to spread outliers before
//! quantization: each block of `b` consecutive values (b a power of two) is
//! multiplied by the normalized Sylvester Hadamard matrix `H_b / sqrt(b)`,
//! which is symmetric and orthogonal, so applying it twice is the identity
//! and `x · W = (x H)(H W)` in real arithmetic. The compiler rotates weights
//! with it at compile time, the runtime rotates activations with it.

/// Rotates `x` in place, block by block; `x.len()` must be a multiple of `b`.
/// Uses 256/512-bit registers where the CPU has them (same operations, same
/// results: only additions, subtractions and one scaling per element).
pub fn rotate_blocks(x: &mut [f32], b: usize) {
    assert!(
        b.is_power_of_two() && x.len().is_multiple_of(b),
        "hadamard: length {} is not a multiple of block {b}",
        x.len()
    );
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") {
            // SAFETY: the CPU has the feature the function is compiled for.
            unsafe { rotate_blocks_avx512(x, b) };
            return;
        }
        if has!("avx2") {
            // SAFETY: as above.
            unsafe { rotate_blocks_avx2(x, b) };
            return;
        }
    }
    rotate_blocks_impl(x, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2")]
unsafe fn rotate_blocks_avx512(x: &mut [f32], b: usize) {
    // SAFETY: AVX-512F implies AVX2.
    unsafe { rotate_blocks_avx2(x, b) }
}

/// One in-register stage on 8-lane registers: lanes whose bit is set in the
/// blend mask `UPPER` take `p - a`, the others `a + p` (the same two
/// operands, in the same order, as the scalar loop's `u + v` and `u - v`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn stage<const UPPER: i32>(
    a: std::arch::x86_64::__m256,
    p: std::arch::x86_64::__m256,
) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    _mm256_blend_ps::<UPPER>(_mm256_add_ps(a, p), _mm256_sub_ps(p, a))
}

/// Strides 1, 2 and 4 inside one 8-lane register (a lane permutation, then
/// [`stage`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn in_register(a: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    // SAFETY: AVX2 as this function.
    unsafe {
        let a = stage::<0xAA>(a, _mm256_permute_ps::<0xB1>(a));
        let a = stage::<0xCC>(a, _mm256_permute_ps::<0x4E>(a));
        stage::<0xF0>(a, _mm256_permute2f128_ps::<0x01>(a, a))
    }
}

/// The 32 values at `p` rotated as one block (`--rotate 32`, the common
/// block) whole in registers: the operations of the general loop of
/// [`rotate_blocks_avx2`] without the round trips through memory.
///
/// # Safety
/// `p` points to 32 readable floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn rotate32_avx2(p: *const f32) -> [std::arch::x86_64::__m256; 4] {
    use std::arch::x86_64::*;
    // SAFETY: every offset + 8 <= 32 (the contract); AVX2 as this function.
    unsafe {
        let a0 = in_register(_mm256_loadu_ps(p));
        let a1 = in_register(_mm256_loadu_ps(p.add(8)));
        let a2 = in_register(_mm256_loadu_ps(p.add(16)));
        let a3 = in_register(_mm256_loadu_ps(p.add(24)));
        let scale = _mm256_set1_ps(1.0 / 32f32.sqrt());
        let (b0, b1) = (_mm256_add_ps(a0, a1), _mm256_sub_ps(a0, a1));
        let (b2, b3) = (_mm256_add_ps(a2, a3), _mm256_sub_ps(a2, a3));
        let (c0, c2) = (_mm256_add_ps(b0, b2), _mm256_sub_ps(b0, b2));
        let (c1, c3) = (_mm256_add_ps(b1, b3), _mm256_sub_ps(b1, b3));
        [
            _mm256_mul_ps(c0, scale),
            _mm256_mul_ps(c1, scale),
            _mm256_mul_ps(c2, scale),
            _mm256_mul_ps(c3, scale),
        ]
    }
}

/// The butterflies on 8-lane registers: strides 1, 2 and 4 inside each
/// vector ([`in_register`]), strides of 8 and more between vectors, then the
/// scaling. Blocks shorter than 8 take the generic loop. (AVX2, for every
/// CPU that has it; the activation encoders of `formats::codes` rotate in
/// AVX-512 registers themselves.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn rotate_blocks_avx2(x: &mut [f32], b: usize) {
    use std::arch::x86_64::*;
    if b < 8 {
        return rotate_blocks_impl(x, b);
    }
    // SAFETY: the caller runs on a CPU with AVX2 (the target feature);
    // every load and store is inside `blk` (see the bounds at each one).
    unsafe {
        if b == 32 {
            for blk in x.chunks_exact_mut(32) {
                let p = blk.as_mut_ptr();
                // SAFETY: blk holds 32 floats; every offset + 8 <= 32.
                let r = rotate32_avx2(p);
                for (i, v) in r.into_iter().enumerate() {
                    _mm256_storeu_ps(p.add(8 * i), v);
                }
            }
            return;
        }
        let scale = _mm256_set1_ps(1.0 / (b as f32).sqrt());
        for blk in x.chunks_exact_mut(b) {
            let p = blk.as_mut_ptr();
            for v in (0..b).step_by(8) {
                // SAFETY: v + 8 <= b = blk.len().
                _mm256_storeu_ps(p.add(v), in_register(_mm256_loadu_ps(p.add(v))));
            }
            let mut h = 8;
            while h < b {
                for i in (0..b).step_by(2 * h) {
                    for j in (i..i + h).step_by(8) {
                        // SAFETY: j + h + 8 <= i + 2h <= b.
                        let u = _mm256_loadu_ps(p.add(j));
                        let w = _mm256_loadu_ps(p.add(j + h));
                        _mm256_storeu_ps(p.add(j), _mm256_add_ps(u, w));
                        _mm256_storeu_ps(p.add(j + h), _mm256_sub_ps(u, w));
                    }
                }
                h *= 2;
            }
            for v in (0..b).step_by(8) {
                // SAFETY: as above.
                _mm256_storeu_ps(p.add(v), _mm256_mul_ps(_mm256_loadu_ps(p.add(v)), scale));
            }
        }
    }
}

#[inline(always)]
fn rotate_blocks_impl(x: &mut [f32], b: usize) {
    let scale = 1.0 / (b as f32).sqrt();
    for blk in x.chunks_exact_mut(b) {
        let mut h = 1;
        while h < b {
            for i in (0..b).step_by(2 * h) {
                for j in i..i + h {
                    let (u, v) = (blk[j], blk[j + h]);
                    blk[j] = u + v;
                    blk[j + h] = u - v;
                }
            }
            h *= 2;
        }
        for v in blk.iter_mut() {
            *v *= scale;
        }
    }
}

/// Rotates the rows of a row-major `[rows, k]` matrix along k.
pub fn rotate_rows(x: &mut [f32], k: usize, b: usize) {
    for row in x.chunks_exact_mut(k) {
        rotate_blocks(row, b);
    }
}

/// Rotates a `[k, n]` row-major matrix along k (its columns), i.e. `H · W`.
pub fn rotate_columns(w: &mut [f32], k: usize, n: usize, b: usize) {
    assert!(w.len() == k * n && k.is_multiple_of(b));
    let mut col = vec![0f32; k];
    for j in 0..n {
        for i in 0..k {
            col[i] = w[i * n + j];
        }
        rotate_blocks(&mut col, b);
        for i in 0..k {
            w[i * n + j] = col[i];
        }
    }
}

/// Rotates a C-order tensor of shape `dims` along `axis`.
pub fn rotate_axis(x: &mut [f32], dims: &[usize], axis: usize, b: usize) {
    let k = dims[axis];
    let inner: usize = dims[axis + 1..].iter().product();
    if inner == 1 {
        rotate_rows(x, k, b);
    } else {
        for chunk in x.chunks_exact_mut(k * inner) {
            rotate_columns(chunk, k, inner, b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_paths_equal_the_baseline_bit_for_bit() {
        let mut seed = 7u32;
        let x: Vec<f32> = (0..4096)
            .map(|_| {
                seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
                (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
            })
            .collect();
        for b in [2, 8, 16, 32, 64, 128, 256] {
            let (mut a, mut c) = (x.clone(), x.clone());
            rotate_blocks(&mut a, b);
            rotate_blocks_impl(&mut c, b);
            assert!(
                a.iter().zip(&c).all(|(p, q)| p.to_bits() == q.to_bits()),
                "block {b}"
            );
        }
    }

    /// Entry (i, j) of the unnormalized Sylvester matrix: (-1)^popcount(i & j).
    fn h(i: usize, j: usize) -> f64 {
        if (i & j).count_ones().is_multiple_of(2) {
            1.0
        } else {
            -1.0
        }
    }

    #[test]
    fn matches_the_explicit_matrix_and_is_an_involution() {
        for b in [1, 2, 8, 32, 64] {
            let x: Vec<f32> = (0..2 * b)
                .map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0)
                .collect();
            let mut y = x.clone();
            rotate_blocks(&mut y, b);
            for blk in 0..2 {
                for i in 0..b {
                    let want: f64 = (0..b).map(|j| h(i, j) * x[blk * b + j] as f64).sum::<f64>()
                        / (b as f64).sqrt();
                    assert!((y[blk * b + i] as f64 - want).abs() < 1e-5, "b={b} i={i}");
                }
            }
            rotate_blocks(&mut y, b);
            for (a, c) in x.iter().zip(&y) {
                assert!((a - c).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn rotate_axis_equals_transposed_rows() {
        let (a, k, c, b) = (2, 32, 3, 32);
        let x: Vec<f32> = (0..a * k * c).map(|i| (i as f32 * 0.3).sin()).collect();
        let mut y = x.clone();
        rotate_axis(&mut y, &[a, k, c], 1, b);
        for i in 0..a {
            for j in 0..c {
                let mut col: Vec<f32> = (0..k).map(|t| x[(i * k + t) * c + j]).collect();
                rotate_blocks(&mut col, b);
                for t in 0..k {
                    assert_eq!(col[t], y[(i * k + t) * c + j]);
                }
            }
        }
    }

    #[test]
    fn rotation_preserves_products() {
        let (k, n, b) = (64, 3, 32);
        let x: Vec<f32> = (0..k).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        let (mut xr, mut wr) = (x.clone(), w.clone());
        rotate_rows(&mut xr, k, b);
        rotate_columns(&mut wr, k, n, b);
        for j in 0..n {
            let a: f32 = (0..k).map(|i| x[i] * w[i * n + j]).sum();
            let c: f32 = (0..k).map(|i| xr[i] * wr[i * n + j]).sum();
            assert!((a - c).abs() < 1e-4, "{a} vs {c}");
        }
    }
}
