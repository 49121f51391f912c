//! Activation rows straight to the operands of the 4-bit integer dot
//! products: per block, signed integer codes and one f64 factor, with
//! `value_i = code_i · factor` exactly.
//!
//! - MXFP4: `code = 2·E2M1` in [-12, 12], factor `2^(scale - 128)`;
//! - HiF4: `code = ±(S1P2 magnitude << (E1_8 + E1_16))` in [-28, 28] (the
//!   identity of §3.6), factor `E6M2 / 4`;
//!
//! a poisoned block (NaN or Inf inside) has factor NaN. These are the
//! reference codecs' encodings, unpacked: the CPU kernels quantize each
//! activation row once with this instead of packing blocks and unpacking
//! them again. Rows may first be rotated by the block Hadamard transform.

use super::mxfp4::{self, Mxfp4Rounding};
use super::{hif4, BlockFormat, Format, FormatError, Hif4, Mxfp4};

/// `2·E2M1(r)` for a scaled magnitude `0 <= r < 8` (§2.2's intervals, the
/// reference `magnitude_code` mapped through `E2M1_X2`) by rounding instead
/// of seven comparisons: `v = 2r` is rounded to a multiple of its step `s`
/// (1 below 4, 2 below 8, else 4): `y = v / s` (exact, `s` is a power of
/// two, and `y < 4`) is split into its integer part and fraction (exact),
/// rounded by the fraction, scaled back and saturated at 12.
#[inline(always)]
fn x2_code(r: f32, mode: Mxfp4Rounding) -> u32 {
    let v = r * 2.0;
    let se = (v.to_bits() >> 23).clamp(128, 130) - 128;
    let y = v * f32::from_bits((127 - se) << 23);
    let f = y.floor();
    // SAFETY: 0 <= f < 4 (`r < 8`), in range of i32 (a plain truncating
    // conversion, which vectorizes where a saturating `as` does not).
    let t = unsafe { f.to_int_unchecked::<i32>() } as u32;
    let frac = y - f;
    let up = match mode {
        Mxfp4Rounding::Rne => frac > 0.5 || (frac == 0.5 && t & 1 == 1),
        Mxfp4Rounding::TiesAway => frac >= 0.5,
    };
    ((t + up as u32) << se).min(12)
}

/// MXFP4 block `v` as signed `2·E2M1` codes and its factor.
#[inline(always)]
fn mxfp4_block(v: &[f32; 32], mode: Mxfp4Rounding, out: &mut [i8]) -> f64 {
    let amax_bits = v.iter().fold(0u32, |m, e| m.max(e.to_bits() & 0x7FFF_FFFF));
    if amax_bits >= 0x7F80_0000 {
        return mxfp4_poisoned(v, mode, out);
    }
    // Steps 3 and 4 of §2.2 as in `mxfp4`'s `encode_finite`.
    let e = (amax_bits >> 23).saturating_sub(2);
    let inv = f32::from_bits((254 - e) << 23);
    for (o, x) in out.iter_mut().zip(v) {
        let b = x.to_bits();
        let m = x2_code(f32::from_bits(b & 0x7FFF_FFFF) * inv, mode) as i32;
        *o = (if b >> 31 != 0 { -m } else { m }) as i8;
    }
    f64::from_bits(((e as u64) + 1023 - 128) << 52)
}

/// A poisoned MXFP4 block through the reference encoder (rare).
#[cold]
fn mxfp4_poisoned(v: &[f32; 32], mode: Mxfp4Rounding, out: &mut [i8]) -> f64 {
    let b = Mxfp4::quantize_block(v, mode);
    for (i, o) in out[..32].iter_mut().enumerate() {
        *o = mxfp4::E2M1_X2[b.code(i) as usize];
    }
    f64::NAN
}

/// The factor of a HiF4 unit's integer codes: its E6M2 scale over 4.
#[inline(always)]
fn hif4_factor(scale_byte: u8) -> f64 {
    hif4::e6m2_to_f32(scale_byte) as f64 / 4.0
}

/// HiF4 unit `v` as its integer codes and its factor.
#[inline(always)]
fn hif4_unit(v: &[f32; 64], variant: hif4::Hif4Variant, out: &mut [i8]) -> f64 {
    let u = Hif4::quantize_block(v, variant);
    out.copy_from_slice(&u.int_codes());
    if u.meta[0] == 0xFF {
        f64::NAN
    } else {
        hif4_factor(u.meta[0])
    }
}

/// Quantizes the rows of `x` (`k` features each) to block codes: row `r`'s
/// codes go to `codes[r·stride..]` (block `t` at `t·block_len`; after the
/// last block, zeros up to `stride`) and its block factors to
/// `factors[r·nb..]`, `nb = ceil(k / block_len)`. With `rotate > 0` each
/// row is first rotated by the block Hadamard transform of that size (a
/// copy: `x` is not changed). The last block of a row is zero-padded.
pub fn quantize_codes(
    f: Format,
    x: &[f32],
    k: usize,
    rotate: usize,
    codes: &mut [i8],
    stride: usize,
    factors: &mut [f64],
) -> Result<(), FormatError> {
    let bl = f.block_len();
    if bl == 1 {
        return Err(FormatError::ModeNotApplicable {
            format: f.name(),
            what: "block codes",
        });
    }
    let nb = k.div_ceil(bl);
    let rows = x.len().checked_div(k).unwrap_or(0);
    if stride < nb * bl {
        return Err(FormatError::SizeMismatch {
            what: "row stride",
            expected: nb * bl,
            got: stride,
        });
    }
    let sizes = [
        ("codes", rows * stride, codes.len()),
        ("block factors", rows * nb, factors.len()),
        ("elements", rows * k, x.len()),
    ];
    for (what, expected, got) in sizes {
        if expected != got {
            return Err(FormatError::SizeMismatch {
                what,
                expected,
                got,
            });
        }
    }
    if rotate > 0 && (!rotate.is_power_of_two() || !k.is_multiple_of(rotate)) {
        return Err(FormatError::NotBlockMultiple {
            format: "hadamard",
            axis: 1,
            len: k,
            block: rotate,
        });
    }
    let rows = Rows {
        f,
        x,
        k,
        rotate,
        codes,
        stride,
        factors,
    };
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") {
            if has!("avx512vbmi") {
                // SAFETY: the CPU has every feature the function is compiled for.
                unsafe { avx512::codes_rows_vbmi(rows) };
            } else {
                // SAFETY: as above.
                unsafe { avx512::codes_rows(rows) };
            }
            return Ok(());
        }
        if has!("avx2") && has!("fma") {
            // SAFETY: as above.
            unsafe { codes_avx2(rows) };
            return Ok(());
        }
    }
    codes_rows(rows);
    Ok(())
}

/// The operands of [`quantize_codes`], checked.
struct Rows<'a> {
    f: Format,
    x: &'a [f32],
    k: usize,
    rotate: usize,
    codes: &'a mut [i8],
    stride: usize,
    factors: &'a mut [f64],
}

/// The portable path compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn codes_avx2(rows: Rows) {
    codes_rows(rows)
}

/// A row's values ready to encode: the row itself (`in_place`), or its copy
/// in `buf` (zero-padded to whole blocks), rotated when `rotate > 0`.
#[inline(always)]
fn row_values<'a>(row: &'a [f32], buf: &'a mut [f32], rotate: usize, in_place: bool) -> &'a [f32] {
    if in_place {
        return row;
    }
    buf[..row.len()].copy_from_slice(row);
    if rotate > 0 {
        crate::hadamard::rotate_blocks(&mut buf[..row.len()], rotate);
    }
    buf
}

/// The portable path: the reference encoders block by block.
#[inline(always)]
fn codes_rows(rows: Rows) {
    let Rows {
        f,
        x,
        k,
        rotate,
        codes,
        stride,
        factors,
    } = rows;
    let bl = f.block_len();
    let nb = k.div_ceil(bl);
    // One row at a time through a zero-padded copy (rotated in place).
    let mut buf = vec![0f32; nb * bl];
    for ((row, crow), frow) in x
        .chunks_exact(k)
        .zip(codes.chunks_exact_mut(stride))
        .zip(factors.chunks_exact_mut(nb))
    {
        let buf = row_values(row, &mut buf, rotate, false);
        match f {
            Format::Mxfp4(mode) => {
                for ((v, c), fo) in buf
                    .chunks_exact(32)
                    .zip(crow.chunks_exact_mut(32))
                    .zip(frow.iter_mut())
                {
                    *fo = mxfp4_block(v.try_into().expect("32"), mode, c);
                }
            }
            Format::Hif4(variant) => {
                for ((v, c), fo) in buf
                    .chunks_exact(64)
                    .zip(crow.chunks_exact_mut(64))
                    .zip(frow.iter_mut())
                {
                    *fo = hif4_unit(v.try_into().expect("64"), variant, c);
                }
            }
            Format::Hif8(_) => unreachable!("checked by quantize_codes"),
        }
        crow[nb * bl..].fill(0);
    }
}

/// The same encodings with 16-lane AVX-512 registers: a row's blocks are
/// read in chunks of `max(block, rotate)` elements straight into registers
/// and rotated there (block Hadamard of 16 to 64: the strides below 16
/// inside a register, the others between registers, with the reference's
/// `u + v`, `u - v` and final scaling), maxima are integer maxima of the
/// magnitudes' bits, and elements are rounded with the reference's
/// operations in the same order (no fused multiply-adds); codes leave
/// narrowed to bytes. With AVX-512 VBMI, MXFP4 elements in four-block steps
/// are encoded by a 128-byte table instead, indexed by the bits that decide
/// the reference's rounding (`mxfp4_index`). Blocks with a NaN or an
/// infinity take the reference encoders.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{hif4_factor, hif4_unit, mxfp4_block, Format, Mxfp4Rounding};
    use crate::formats::hif4::{self, Hif4Variant};
    use std::arch::x86_64::*;

    /// The rows as in `super::codes_rows`: in place when K is a multiple
    /// of the chunk and the rotation (if any) 16 to 64; else through a
    /// zero-padded copy rotated by `hadamard::rotate_blocks`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW, DQ and VL; sizes as checked by
    /// `quantize_codes`.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
    pub(super) unsafe fn codes_rows(rows: super::Rows) {
        // SAFETY: as this function's.
        unsafe { rows_with::<false>(rows) }
    }

    /// [`codes_rows`] with MXFP4 elements encoded through a byte table
    /// lookup ([`mxfp4x4`]).
    ///
    /// # Safety
    /// As [`codes_rows`], and the CPU has AVX-512 VBMI.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vbmi")]
    pub(super) unsafe fn codes_rows_vbmi(rows: super::Rows) {
        // SAFETY: as this function's.
        unsafe { rows_with::<true>(rows) }
    }

    /// The body of [`codes_rows`] (`VBMI`: of [`codes_rows_vbmi`]).
    #[inline(always)]
    unsafe fn rows_with<const VBMI: bool>(rows: super::Rows) {
        let super::Rows {
            f,
            x,
            k,
            rotate,
            codes,
            stride,
            factors,
        } = rows;
        let bl = f.block_len();
        let nb = k.div_ceil(bl);
        let ch = bl.max(rotate);
        let direct = k.is_multiple_of(ch) && (rotate == 0 || (16..=64).contains(&rotate));
        let (ch, rot) = if direct { (ch, rotate) } else { (bl, 0) };
        if direct && k == nb * bl && stride == k {
            // Rows back to back without padding, whole blocks and
            // rotations in each: the matrix is one long row, so that short
            // rows (K = 64) take the four-block steps too, two at a time.
            let wide = x.len() / 128 * 128;
            let (xw, xr) = x.split_at(wide);
            let (cw, cr) = codes.split_at_mut(wide);
            let (fw, fr) = factors.split_at_mut(wide / bl);
            // SAFETY: AVX-512 as this function; lengths in whole chunks.
            unsafe { chunks::<8, VBMI>(f, xw, rotate, cw, fw) };
            match ch {
                // SAFETY: as above.
                32 => unsafe { chunks::<2, VBMI>(f, xr, rotate, cr, fr) },
                // SAFETY: as above.
                _ => unsafe { chunks::<4, VBMI>(f, xr, rotate, cr, fr) },
            }
            return;
        }
        let mut buf = if direct {
            Vec::new()
        } else {
            vec![0f32; nb * bl]
        };
        for ((row, crow), frow) in x
            .chunks_exact(k)
            .zip(codes.chunks_exact_mut(stride))
            .zip(factors.chunks_exact_mut(nb))
        {
            let src = super::row_values(row, &mut buf, rotate, direct);
            let body = &mut crow[..nb * bl];
            // Four MXFP4 blocks or two HiF4 units at a time where the row
            // allows, so that their scales' latencies overlap.
            let wide = direct && k.is_multiple_of(128);
            match (wide, ch) {
                // SAFETY: AVX-512 as this function.
                (true, _) => unsafe { chunks::<8, VBMI>(f, src, rot, body, frow) },
                // SAFETY: as above.
                (false, 32) => unsafe { chunks::<2, VBMI>(f, src, rot, body, frow) },
                // SAFETY: as above.
                (false, _) => unsafe { chunks::<4, VBMI>(f, src, rot, body, frow) },
            }
            crow[nb * bl..].fill(0);
        }
    }

    /// The blocks of one row, `16N` elements (one chunk) at a time.
    #[inline(always)]
    unsafe fn chunks<const N: usize, const VBMI: bool>(
        f: Format,
        src: &[f32],
        rot: usize,
        out: &mut [i8],
        fac: &mut [f64],
    ) {
        // SAFETY: inlined into `codes_rows` (AVX-512), as are the
        // intrinsics; memory accesses as commented.
        unsafe {
            let per = 16 * N / f.block_len();
            for ((chunk, o), fo) in src
                .chunks_exact(16 * N)
                .zip(out.chunks_exact_mut(16 * N))
                .zip(fac.chunks_exact_mut(per))
            {
                let mut v = [_mm512_setzero_ps(); N];
                for (i, r) in v.iter_mut().enumerate() {
                    // SAFETY: `chunk` holds 16N floats.
                    *r = _mm512_loadu_ps(chunk.as_ptr().add(16 * i));
                }
                if rot > 0 {
                    hadamard(&mut v, rot);
                }
                match f {
                    Format::Mxfp4(mode) if N == 8 => {
                        let mut v8 = [v[0]; 8];
                        v8[..N].copy_from_slice(&v);
                        mxfp4x4::<VBMI>(v8, mode, o, fo);
                    }
                    Format::Mxfp4(mode) => {
                        for q in 0..N / 2 {
                            fo[q] = mxfp4([v[2 * q], v[2 * q + 1]], mode, &mut o[32 * q..]);
                        }
                    }
                    Format::Hif4(variant) => {
                        // Both units' scales first: two independent chains
                        // of scalar work side by side.
                        let mut units = [[v[0]; 4]; 2];
                        for (i, x) in v.iter().enumerate() {
                            units[i / 4][i % 4] = *x;
                        }
                        let prep = [hif4_scale(&units[0]), hif4_scale(&units[1])];
                        if let (8, Some((b0, r0)), Some((b1, r1))) = (N, prep[0], prep[1]) {
                            // Both finite: the eight registers in one
                            // straight run, so that the two units' chains
                            // interleave.
                            let v8: [__m512; 8] = std::array::from_fn(|i| v[i]);
                            hif4_encode::<8>(&v8, [r0, r1], variant, o);
                            fo[0] = hif4_factor(b0);
                            fo[1] = hif4_factor(b1);
                            continue;
                        }
                        for q in 0..N / 4 {
                            let o = &mut o[64 * q..][..64];
                            fo[q] = match prep[q] {
                                Some((scale_byte, rec)) => {
                                    hif4_encode::<4>(&units[q], [rec, rec], variant, o);
                                    hif4_factor(scale_byte)
                                }
                                None => hif4_unit(&spill::<4, 64>(&units[q]), variant, o),
                            };
                        }
                    }
                    Format::Hif8(_) => unreachable!("checked by quantize_codes"),
                }
            }
        }
    }

    /// One butterfly stage inside registers: `p + s·a` with `p` the partner
    /// lanes and `s` = -1 in the upper lane of each pair, +1 in the lower:
    /// `a + p` and `p - a`, the reference's `u + v` and `u - v` (the
    /// product by ±1 is exact, so the fused multiply-add rounds once, as
    /// the addition does).
    #[inline(always)]
    unsafe fn stage(a: __m512, p: __m512, upper: __mmask16) -> __m512 {
        // SAFETY: inlined into `codes_rows` (AVX-512), as are the
        // intrinsics; memory accesses as commented.
        unsafe {
            let s = _mm512_mask_blend_ps(upper, _mm512_set1_ps(1.0), _mm512_set1_ps(-1.0));
            _mm512_fmadd_ps(s, a, p)
        }
    }

    /// Block Hadamard transforms of size `b` (16 to 64) over the registers
    /// `v` (16 elements each, in order), all in registers.
    #[inline(always)]
    unsafe fn hadamard<const N: usize>(v: &mut [__m512; N], b: usize) {
        // SAFETY: inlined into `codes_rows` (AVX-512), as are the
        // intrinsics; memory accesses as commented.
        unsafe {
            for a in v.iter_mut() {
                let x = *a;
                let x = stage(x, _mm512_permute_ps::<0xB1>(x), 0xAAAA);
                let x = stage(x, _mm512_permute_ps::<0x4E>(x), 0xCCCC);
                let x = stage(x, _mm512_shuffle_f32x4::<0xB1>(x, x), 0xF0F0);
                *a = stage(x, _mm512_shuffle_f32x4::<0x4E>(x, x), 0xFF00);
            }
            // Strides of 16 and 32 elements: registers i and i + h.
            for h in [1, 2] {
                if 16 * h >= b {
                    break;
                }
                for i in 0..N {
                    if i & h == 0 && i + h < N {
                        let (x, y) = (v[i], v[i + h]);
                        v[i] = _mm512_add_ps(x, y);
                        v[i + h] = _mm512_sub_ps(x, y);
                    }
                }
            }
            let scale = _mm512_set1_ps(1.0 / (b as f32).sqrt());
            for a in v.iter_mut() {
                *a = _mm512_mul_ps(*a, scale);
            }
        }
    }

    /// Spills registers for the reference encoders.
    #[inline(always)]
    unsafe fn spill<const N: usize, const E: usize>(v: &[__m512; N]) -> [f32; E] {
        let mut a = [0f32; E];
        for (c, x) in a.chunks_exact_mut(16).zip(v) {
            // SAFETY: each chunk holds 16 floats; AVX-512 (inlined into
            // `codes_rows`).
            unsafe { _mm512_storeu_ps(c.as_mut_ptr(), *x) };
        }
        a
    }

    /// Signs from `bits` (negative where the sign bit is set) applied to
    /// the magnitudes `m`.
    #[inline(always)]
    unsafe fn signed(m: __m512i, bits: __m512i) -> __m512i {
        // SAFETY: inlined into `codes_rows` (AVX-512), as are the
        // intrinsics.
        unsafe {
            let neg = _mm512_cmplt_epi32_mask(bits, _mm512_setzero_si512());
            _mm512_mask_sub_epi32(m, neg, _mm512_setzero_si512(), m)
        }
    }

    /// One register of codes (each in i8 range) narrowed to 16 bytes at
    /// `out`.
    #[inline(always)]
    unsafe fn store16(c: __m512i, out: &mut [i8]) {
        let out: &mut [i8; 16] = (&mut out[..16]).try_into().expect("16 bytes");
        // SAFETY: 16 writable bytes; AVX-512 (inlined into `codes_rows`).
        unsafe { _mm_storeu_si128(out.as_mut_ptr() as *mut __m128i, _mm512_cvtepi32_epi8(c)) };
    }

    /// Four registers of codes (each in i8 range, so the saturating packs
    /// are exact) narrowed to 64 bytes at `out`, in order: two packs leave
    /// 128-bit lane `l` holding dwords `4l..4l+4` of each register, one
    /// dword permute puts them back in place, and one store writes them
    /// (a narrowing store per register is several times slower on Zen 4).
    #[inline(always)]
    unsafe fn store64(c: [__m512i; 4], out: &mut [i8]) {
        let out: &mut [i8; 64] = (&mut out[..64]).try_into().expect("64 bytes");
        // SAFETY: 64 writable bytes; AVX-512 (inlined into `codes_rows`).
        unsafe {
            let w = _mm512_packs_epi16(
                _mm512_packs_epi32(c[0], c[1]),
                _mm512_packs_epi32(c[2], c[3]),
            );
            let idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
            _mm512_storeu_si512(out.as_mut_ptr() as *mut _, _mm512_permutexvar_epi32(idx, w));
        }
    }

    /// `super::mxfp4_block` (with `super::x2_code`) on one 32-block.
    #[inline(always)]
    unsafe fn mxfp4(v: [__m512; 2], mode: Mxfp4Rounding, out: &mut [i8]) -> f64 {
        // SAFETY: inlined into `codes_rows` (AVX-512), as are the
        // intrinsics; memory accesses as commented.
        unsafe {
            let absm = _mm512_set1_epi32(0x7FFF_FFFF);
            let bits = [_mm512_castps_si512(v[0]), _mm512_castps_si512(v[1])];
            let a = [
                _mm512_and_si512(bits[0], absm),
                _mm512_and_si512(bits[1], absm),
            ];
            let amax_bits = _mm512_reduce_max_epu32(_mm512_max_epu32(a[0], a[1]));
            if amax_bits >= 0x7F80_0000 {
                return mxfp4_block(&spill::<2, 32>(&v), mode, out);
            }
            let e = (amax_bits >> 23).saturating_sub(2);
            let inv = _mm512_set1_ps(f32::from_bits((254 - e) << 23));
            for i in 0..2 {
                store16(mxfp4_vec(a[i], bits[i], inv, mode), &mut out[16 * i..]);
            }
            f64::from_bits(((e as u64) + 1023 - 128) << 52)
        }
    }

    /// The 16 codes of one register of an MXFP4 block (magnitude bits `a`,
    /// sign bits from `bits`) with the block's `2^-se` in every lane of
    /// `inv`: `super::x2_code`, signed.
    #[inline(always)]
    unsafe fn mxfp4_vec(a: __m512i, bits: __m512i, inv: __m512, mode: Mxfp4Rounding) -> __m512i {
        // SAFETY: inlined into `codes_rows` (AVX-512), as are the
        // intrinsics.
        unsafe {
            let (half, one) = (_mm512_set1_ps(0.5), _mm512_set1_epi32(1));
            let (lo, hi) = (_mm512_set1_epi32(128), _mm512_set1_epi32(130));
            let r = _mm512_mul_ps(_mm512_castsi512_ps(a), inv);
            let v2 = _mm512_add_ps(r, r);
            let se = _mm512_srli_epi32::<23>(_mm512_castps_si512(v2));
            let se = _mm512_sub_epi32(_mm512_min_epu32(_mm512_max_epu32(se, lo), hi), lo);
            let ps = _mm512_slli_epi32::<23>(_mm512_sub_epi32(_mm512_set1_epi32(127), se));
            let y = _mm512_mul_ps(v2, _mm512_castsi512_ps(ps));
            let q = match mode {
                // `x2_code`'s rounding by the fraction is round-to-nearest-
                // even of y: one conversion with that rounding.
                Mxfp4Rounding::Rne => {
                    _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(y)
                }
                Mxfp4Rounding::TiesAway => {
                    let f =
                        _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(y);
                    let t = _mm512_cvttps_epi32(f);
                    let up = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(_mm512_sub_ps(y, f), half);
                    _mm512_mask_add_epi32(t, up, t, one)
                }
            };
            let q = _mm512_sllv_epi32(q, se);
            let q = _mm512_min_epi32(q, _mm512_set1_epi32(12));
            signed(q, bits)
        }
    }

    /// The lookup index of [`mxfp4_table`] for the 16 elements `x` of a
    /// block with the block's `2^-se` in every lane of `inv`: the scaled
    /// magnitude `r = |x| · inv` (below 8; raised to 2^-3, whose code is 0
    /// as that of anything below it), its exponent less 124 (0 to 5) and top
    /// two mantissa bits, whether any mantissa bit below them is set (the
    /// rounding's sticky bit) and x's sign in bit 6. These decide
    /// `super::x2_code` and the sign.
    #[inline(always)]
    unsafe fn mxfp4_index(x: __m512, inv: __m512) -> __m512i {
        // SAFETY: inlined into `codes_rows` (AVX-512), as are the
        // intrinsics.
        unsafe {
            let r = _mm512_mul_ps(x, inv);
            // max(|r|, 2^-3), the sign cleared.
            let m = _mm512_castps_si512(_mm512_range_ps::<0x0B>(r, _mm512_set1_ps(0.125)));
            let t = _mm512_sub_epi32(_mm512_srli_epi32::<21>(m), _mm512_set1_epi32(124 << 2));
            let t = _mm512_add_epi32(t, t);
            let sticky = _mm512_test_epi32_mask(m, _mm512_set1_epi32(0x1F_FFFF));
            let t = _mm512_mask_add_epi32(t, sticky, t, _mm512_set1_epi32(1));
            let neg = _mm512_movepi32_mask(_mm512_castps_si512(r));
            _mm512_mask_or_epi32(t, neg, t, _mm512_set1_epi32(64))
        }
    }

    /// Per index of [`mxfp4_index`], the signed code `super::x2_code` gives
    /// (computed from a magnitude of that exponent, those top bits and, with
    /// the sticky bit, the lowest mantissa bit set); indices of exponents
    /// past 2^2 do not occur (0).
    fn mxfp4_table(mode: Mxfp4Rounding) -> [i8; 128] {
        let mut t = [0i8; 128];
        for (i, c) in t.iter_mut().enumerate() {
            let (neg, e, m2, sticky) = (i >> 6, (i >> 3) & 7, (i >> 1) & 3, i & 1);
            if e > 5 {
                continue;
            }
            let bits = ((e as u32 + 124) << 23) | ((m2 as u32) << 21) | sticky as u32;
            let m = super::x2_code(f32::from_bits(bits), mode) as i8;
            *c = if neg == 1 { -m } else { m };
        }
        t
    }

    /// Four registers of [`mxfp4_index`] indices narrowed to bytes (exact:
    /// they are below 128), looked up in [`mxfp4_table`] (`vpermi2b`) and
    /// written to 64 bytes at `out` in order (as [`store64`]).
    #[inline(always)]
    unsafe fn store64_lookup(c: [__m512i; 4], mode: Mxfp4Rounding, out: &mut [i8]) {
        static TABLES: std::sync::OnceLock<[[i8; 128]; 2]> = std::sync::OnceLock::new();
        let tabs = TABLES.get_or_init(|| {
            [
                mxfp4_table(Mxfp4Rounding::Rne),
                mxfp4_table(Mxfp4Rounding::TiesAway),
            ]
        });
        let tab = &tabs[match mode {
            Mxfp4Rounding::Rne => 0,
            Mxfp4Rounding::TiesAway => 1,
        }];
        let out: &mut [i8; 64] = (&mut out[..64]).try_into().expect("64 bytes");
        // SAFETY: the table holds 128 bytes, `out` 64 writable ones; AVX-512
        // VBMI (inlined into `codes_rows_vbmi`).
        unsafe {
            let lo = _mm512_loadu_si512(tab.as_ptr() as *const _);
            let hi = _mm512_loadu_si512(tab.as_ptr().add(64) as *const _);
            let w = _mm512_packs_epi16(
                _mm512_packs_epi32(c[0], c[1]),
                _mm512_packs_epi32(c[2], c[3]),
            );
            let codes = _mm512_permutex2var_epi8(lo, w, hi);
            let idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
            _mm512_storeu_si512(
                out.as_mut_ptr() as *mut _,
                _mm512_permutexvar_epi32(idx, codes),
            );
        }
    }

    /// Four MXFP4 blocks (registers `2q`, `2q + 1` block `q`) at once: their
    /// maxima reduced together (block `q`'s in 128-bit lane `q`), their
    /// scales as one vector. A batch with a NaN or an infinity takes
    /// [`mxfp4`] block by block.
    #[inline(always)]
    unsafe fn mxfp4x4<const VBMI: bool>(
        v: [__m512; 8],
        mode: Mxfp4Rounding,
        out: &mut [i8],
        fo: &mut [f64],
    ) {
        // SAFETY: inlined into `codes_rows` (AVX-512), as are the
        // intrinsics.
        unsafe {
            let absm = _mm512_set1_epi32(0x7FFF_FFFF);
            let (mut bits, mut a) = ([absm; 8], [absm; 8]);
            for i in 0..8 {
                bits[i] = _mm512_castps_si512(v[i]);
                a[i] = _mm512_and_si512(bits[i], absm);
            }
            let mut m = [absm; 4];
            for q in 0..4 {
                m[q] = _mm512_max_epu32(a[2 * q], a[2 * q + 1]);
            }
            let t01 = _mm512_max_epu32(
                _mm512_shuffle_i32x4::<0x44>(m[0], m[1]),
                _mm512_shuffle_i32x4::<0xEE>(m[0], m[1]),
            );
            let t23 = _mm512_max_epu32(
                _mm512_shuffle_i32x4::<0x44>(m[2], m[3]),
                _mm512_shuffle_i32x4::<0xEE>(m[2], m[3]),
            );
            let u = _mm512_max_epu32(
                _mm512_shuffle_i32x4::<0x88>(t01, t23),
                _mm512_shuffle_i32x4::<0xDD>(t01, t23),
            );
            let u = _mm512_max_epu32(u, _mm512_shuffle_epi32::<0x4E>(u));
            let u = _mm512_max_epu32(u, _mm512_shuffle_epi32::<0xB1>(u));
            if _mm512_cmpge_epu32_mask(u, _mm512_set1_epi32(0x7F80_0000)) != 0 {
                for q in 0..4 {
                    fo[q] = mxfp4([v[2 * q], v[2 * q + 1]], mode, &mut out[32 * q..]);
                }
                return;
            }
            let two = _mm512_set1_epi32(2);
            let e = _mm512_sub_epi32(_mm512_max_epu32(_mm512_srli_epi32::<23>(u), two), two);
            let inv = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_sub_epi32(
                _mm512_set1_epi32(254),
                e,
            )));
            let invq = [
                _mm512_shuffle_f32x4::<0x00>(inv, inv),
                _mm512_shuffle_f32x4::<0x55>(inv, inv),
                _mm512_shuffle_f32x4::<0xAA>(inv, inv),
                _mm512_shuffle_f32x4::<0xFF>(inv, inv),
            ];
            for h in 0..2 {
                let mut c = [absm; 4];
                for (j, c) in c.iter_mut().enumerate() {
                    let i = 4 * h + j;
                    *c = if VBMI {
                        mxfp4_index(v[i], invq[i / 2])
                    } else {
                        mxfp4_vec(a[i], bits[i], invq[i / 2], mode)
                    };
                }
                if VBMI {
                    store64_lookup(c, mode, &mut out[64 * h..]);
                } else {
                    store64(c, &mut out[64 * h..]);
                }
            }
            // Factors 2^(e - 128) from lanes 0, 4, 8, 12.
            let e4 = _mm512_castsi512_si128(_mm512_maskz_compress_epi32(0x1111, e));
            let fb = _mm256_slli_epi64::<52>(_mm256_add_epi64(
                _mm256_cvtepu32_epi64(e4),
                _mm256_set1_epi64x(1023 - 128),
            ));
            let fo: &mut [f64; 4] = (&mut fo[..4]).try_into().expect("4 factors");
            _mm256_storeu_pd(fo.as_mut_ptr(), _mm256_castsi256_pd(fb));
        }
    }

    /// `hif4::encode_finite`'s steps 2 to 6 for one unit: its scale byte
    /// and bf16 reciprocal, or `None` when a NaN or an infinity poisons it.
    #[inline(always)]
    unsafe fn hif4_scale(v: &[__m512; 4]) -> Option<(u8, f32)> {
        // SAFETY: inlined into `codes_rows` (AVX-512), as are the
        // intrinsics.
        unsafe {
            let absm = _mm512_set1_epi32(0x7FFF_FFFF);
            let mut amax = _mm512_setzero_si512();
            for x in v {
                amax = _mm512_max_epu32(amax, _mm512_and_si512(_mm512_castps_si512(*x), absm));
            }
            let amax_bits = _mm512_reduce_max_epu32(amax);
            if amax_bits < 0x7F80_0000 {
                Some(hif4::unit_scale(f32::from_bits(amax_bits)))
            } else {
                None
            }
        }
    }

    /// `hif4::encode_finite`'s steps 2, 3, 7 and 8 on `R / 4` units (4 or
    /// 8 registers) with their scales from [`hif4_scale`] (`recs[j / 4]`
    /// for register `j`), to the codes of `Hif4Unit::int_codes`: register
    /// `j` holds groups `2j` and `2j + 1` of its unit, each 128-bit lane one
    /// subgroup.
    #[inline(always)]
    unsafe fn hif4_encode<const R: usize>(
        v: &[__m512; R],
        recs: [f32; 2],
        variant: Hif4Variant,
        out: &mut [i8],
    ) {
        // The variant chosen once, outside the registers' loop.
        // SAFETY: inlined into `codes_rows` (AVX-512), as is the callee.
        unsafe {
            match variant {
                Hif4Variant::Consortium => hif4_encode_v::<R, false>(v, recs, out),
                Hif4Variant::Amct => hif4_encode_v::<R, true>(v, recs, out),
            }
        }
    }

    /// [`hif4_encode`] for one variant (`AMCT`: the bf16-rounded scaled
    /// magnitude).
    #[inline(always)]
    unsafe fn hif4_encode_v<const R: usize, const AMCT: bool>(
        v: &[__m512; R],
        recs: [f32; 2],
        out: &mut [i8],
    ) {
        // SAFETY: inlined into `codes_rows` (AVX-512), as are the
        // intrinsics; memory accesses as commented.
        unsafe {
            let absm = _mm512_set1_epi32(0x7FFF_FFFF);
            let recv = [_mm512_set1_ps(recs[0]), _mm512_set1_ps(recs[1])];
            let (two, four, seven) = (
                _mm512_set1_ps(2.0),
                _mm512_set1_ps(4.0),
                _mm512_set1_ps(7.0),
            );
            let (half, one) = (_mm512_set1_ps(0.5), _mm512_set1_epi32(1));
            // 2^(2-d) (consortium) or 2^(-d) (AMCT).
            let base = _mm512_set1_epi32(if AMCT { 127 } else { 129 });
            let mut codes = [absm; R];
            for j in 0..R {
                let bits = _mm512_castps_si512(v[j]);
                let aj = _mm512_and_si512(bits, absm);
                let recv = recv[j / 4];
                let m4 = _mm512_max_epu32(aj, _mm512_shuffle_epi32::<0xB1>(aj));
                let m4 = _mm512_max_epu32(m4, _mm512_shuffle_epi32::<0x4E>(m4));
                let m8 = _mm512_max_epu32(m4, _mm512_shuffle_i32x4::<0xB1>(m4, m4));
                let (v4, v8) = (_mm512_castsi512_ps(m4), _mm512_castsi512_ps(m8));
                let e8 = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(_mm512_mul_ps(v8, recv), four);
                let thr = _mm512_mask_blend_ps(e8, two, four);
                let e16 = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(_mm512_mul_ps(v4, recv), thr);
                let d = _mm512_maskz_mov_epi32(e8, one);
                let d = _mm512_mask_add_epi32(d, e16, d, one);
                let pw = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_sub_epi32(base, d)));
                let t = _mm512_mul_ps(_mm512_mul_ps(_mm512_castsi512_ps(aj), recv), pw);
                let y = if AMCT {
                    // bf16 rounding of t (RNE on the bits), times 4.
                    let u = _mm512_castps_si512(t);
                    let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(u), one);
                    let u = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
                    let u = _mm512_and_si512(u, _mm512_set1_epi32(0xFFFF_0000u32 as i32));
                    _mm512_add_ps(_mm512_mul_ps(four, _mm512_castsi512_ps(u)), half)
                } else {
                    _mm512_add_ps(t, half)
                };
                // min(7, floor(y)) for y >= 0.5.
                let c = _mm512_cvttps_epi32(_mm512_min_ps(y, seven));
                codes[j] = signed(_mm512_sllv_epi32(c, d), bits);
            }
            for (q, c) in codes.chunks_exact(4).enumerate() {
                store64([c[0], c[1], c[2], c[3]], &mut out[64 * q..]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::{Hif4Variant, Mxfp4Block};

    /// `x2_code` against the reference element cast on every float near
    /// the interval bounds (and the grid points), and on a sweep of all
    /// binades below 8.
    #[test]
    fn x2_code_matches_the_reference_cast() {
        let mut rs: Vec<f32> = Vec::new();
        for t in [
            0.25f32, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 7.0,
        ] {
            for d in -64i32..=64 {
                rs.push(f32::from_bits((t.to_bits() as i32 + d) as u32));
            }
        }
        for b in (0..0x4100_0000u32).step_by(4099) {
            rs.push(f32::from_bits(b));
        }
        rs.push(0.0);
        rs.push(f32::from_bits(0x40FF_FFFF)); // just below 8
        for mode in [Mxfp4Rounding::Rne, Mxfp4Rounding::TiesAway] {
            for &r in &rs {
                let want = mxfp4::E2M1_X2[mxfp4::encode_e2m1(r, mode) as usize];
                assert_eq!(x2_code(r, mode) as i8, want, "{mode:?} r = {r:e}");
            }
        }
    }

    /// Rows with every kind of value: wide magnitudes, exact ties of the
    /// E2M1 grid, zeros, and (in some blocks) NaN and infinities.
    fn rows(rows: usize, k: usize, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        (0..rows * k)
            .map(|i| {
                let r = next();
                // Non-finite values in the first two rows only: the others
                // keep whole batches of blocks clean.
                let special = if i < 2 * k { i % 397 } else { 0 };
                match (special, r % 23) {
                    (5, _) => f32::NAN,
                    (200, _) => f32::INFINITY,
                    (301, _) => f32::NEG_INFINITY,
                    (_, 0) => 0.0,
                    (_, 1) => -0.0,
                    (_, 2) => {
                        ((r >> 8) % 13) as f32 * 0.25 * if r & 1 << 40 != 0 { -1.0 } else { 1.0 }
                    }
                    _ => {
                        let m = ((r >> 11) as u32 % (1 << 23)) as f32 / (1 << 23) as f32 - 0.5;
                        // Neighbouring 32-blocks scaled apart (2^-2..2^2),
                        // so that each block's own scale matters.
                        let blk = ((i % k) / 32 % 5) as u32;
                        m * f32::from_bits((((r >> 40) % 60 + 95) as u32 + blk) << 23)
                    }
                }
            })
            .collect()
    }

    /// The reference: quantize each (rotated) row with the bulk codec, then
    /// unpack every block to codes and factor.
    fn reference(f: Format, x: &[f32], k: usize, rotate: usize) -> (Vec<i8>, Vec<f64>) {
        let mut rx = x.to_vec();
        if rotate > 0 {
            for row in rx.chunks_exact_mut(k) {
                crate::hadamard::rotate_blocks(row, rotate);
            }
        }
        let rows = x.len() / k;
        let l = crate::formats::AxisLayout::new(&[rows, k], 1, f.block_len());
        let packed = f.quantize(&rx, &l).expect("quantize");
        let (mut codes, mut factors) = (Vec::new(), Vec::new());
        for blk in packed.chunks_exact(f.block_bytes()) {
            match f {
                Format::Mxfp4(_) => {
                    let b = Mxfp4Block {
                        scale: blk[0],
                        data: blk[1..].try_into().expect("16"),
                    };
                    codes.extend((0..32).map(|i| mxfp4::E2M1_X2[b.code(i) as usize]));
                    factors.push(if b.scale == 0xFF {
                        f64::NAN
                    } else {
                        mxfp4::e8m0_to_f32(b.scale) as f64 / 2.0
                    });
                }
                _ => {
                    let u = hif4::Hif4Unit {
                        meta: blk[..4].try_into().expect("4"),
                        data: blk[4..].try_into().expect("32"),
                    };
                    codes.extend(u.int_codes());
                    factors.push(hif4::e6m2_to_f32(u.meta[0]) as f64 / 4.0);
                }
            }
        }
        (codes, factors)
    }

    /// Which encoder [`codes_match_the_reference_codecs`] runs.
    #[derive(Clone, Copy)]
    enum Path {
        Dispatched,
        Avx512,
        Portable,
    }

    #[test]
    fn codes_match_the_reference_codecs() {
        let formats = [
            Format::Mxfp4(Mxfp4Rounding::Rne),
            Format::Mxfp4(Mxfp4Rounding::TiesAway),
            Format::Hif4(Hif4Variant::Consortium),
            Format::Hif4(Hif4Variant::Amct),
        ];
        for f in formats {
            let bl = f.block_len();
            // In place with rotations 0 to 64 (four-block batches where K
            // is a multiple of 128), through the rotated copy (K = 100, or
            // a rotation past 64).
            for (k, rotate) in [
                (256, 0),
                (256, 32),
                (128, 64),
                (100, 0),
                (64 * 5, 16),
                (256, 128),
                (64, 0),
                (64, 32),
                (64, 64),
                (32, 0),
                (32, 16),
            ] {
                let n = 7;
                let x = rows(n, k, 0x5EED ^ k as u64 ^ rotate as u64);
                let nb = k.div_ceil(bl);
                // Padded rows, and rows back to back (the AVX-512 path then
                // runs all 7 rows as one: four-block steps across rows, and
                // the rest).
                let strides = [(nb * bl).div_ceil(64) * 64 + 64, nb * bl];
                // The dispatched path (AVX-512 where the CPU has it, with
                // VBMI where it has that), the AVX-512 path without VBMI (on
                // a CPU with VBMI), then the portable one.
                let paths = [Path::Dispatched, Path::Avx512, Path::Portable];
                for (stride, path) in strides
                    .into_iter()
                    .flat_map(|s| paths.into_iter().map(move |p| (s, p)))
                {
                    let mut codes = vec![99i8; n * stride];
                    let mut factors = vec![0f64; n * nb];
                    let rows = Rows {
                        f,
                        x: &x,
                        k,
                        rotate,
                        codes: &mut codes,
                        stride,
                        factors: &mut factors,
                    };
                    match path {
                        Path::Dispatched => {
                            quantize_codes(f, &x, k, rotate, rows.codes, stride, rows.factors)
                                .expect("quantize_codes")
                        }
                        Path::Avx512 => {
                            #[cfg(target_arch = "x86_64")]
                            {
                                use std::arch::is_x86_feature_detected as has;
                                let avx512 = has!("avx512f")
                                    && has!("avx512bw")
                                    && has!("avx512dq")
                                    && has!("avx512vl");
                                if !(avx512 && has!("avx512vbmi")) {
                                    continue;
                                }
                                // SAFETY: the CPU has AVX-512 (F, BW, DQ,
                                // VL); sizes as quantize_codes checks them.
                                unsafe { avx512::codes_rows(rows) };
                            }
                            #[cfg(not(target_arch = "x86_64"))]
                            continue;
                        }
                        Path::Portable => codes_rows(rows),
                    }
                    let (rc, rf) = reference(f, &x, k, rotate);
                    let mut poisoned = 0;
                    for r in 0..n {
                        let got = &codes[r * stride..][..nb * bl];
                        assert_eq!(got, &rc[r * nb * bl..][..nb * bl], "{f:?} k={k} row {r}");
                        assert!(codes[r * stride + nb * bl..(r + 1) * stride]
                            .iter()
                            .all(|&c| c == 0));
                        for t in 0..nb {
                            let (g, w) = (factors[r * nb + t], rf[r * nb + t]);
                            poisoned += g.is_nan() as usize;
                            assert!(
                                g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                                "{f:?} k={k} row {r} block {t}: {g} vs {w}"
                            );
                        }
                    }
                    if rotate == 0 && k == 256 {
                        assert!(poisoned > 0, "the data poisons some blocks");
                    }
                }
            }
        }
    }

    #[test]
    fn bad_sizes_are_errors() {
        let f = Format::Mxfp4(Mxfp4Rounding::Rne);
        let x = vec![0f32; 64];
        let (mut c, mut s) = (vec![0i8; 64], vec![0f64; 2]);
        assert!(quantize_codes(f, &x, 64, 0, &mut c, 64, &mut s).is_ok());
        assert!(quantize_codes(f, &x, 64, 0, &mut c, 32, &mut s).is_err());
        assert!(quantize_codes(f, &x, 64, 0, &mut c, 64, &mut s[..1]).is_err());
        assert!(quantize_codes(f, &x, 64, 48, &mut c, 64, &mut s).is_err());
        let h8 = Format::parse("hif8", None, None).expect("hif8");
        assert!(quantize_codes(h8, &x, 64, 0, &mut c, 64, &mut s).is_err());
    }
}
