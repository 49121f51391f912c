//! Exact bit-level helpers shared by the formats (SPEC §0).

/// `lg(a) = ⌊log2 a⌋` for a finite `a > 0`, computed exactly from the bit pattern.
/// Never use a floating-point `log2` for this: it rounds up a few ulps below 2^k.
#[inline]
pub fn lg(a: f32) -> i32 {
    let bits = a.to_bits() & 0x7FFF_FFFF;
    let ef = bits >> 23;
    if ef >= 1 {
        ef as i32 - 127
    } else {
        (31 - bits.leading_zeros() as i32) - 149
    }
}

/// 2^k as an f32, built from bits; exact for every k in -149..=127.
#[inline]
pub const fn pow2(k: i32) -> f32 {
    assert!(k >= -149 && k <= 127);
    if k >= -126 {
        f32::from_bits(((k + 127) as u32) << 23)
    } else {
        f32::from_bits(1u32 << (k + 149))
    }
}

/// Rounds a finite f32 to bf16 (RNE), returned widened to f32: SPEC §0's
/// `(u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000`.
#[inline]
pub fn bf16_round(x: f32) -> f32 {
    let u = x.to_bits();
    f32::from_bits(u.wrapping_add(0x7FFF + ((u >> 16) & 1)) & 0xFFFF_0000)
}

/// True for NaN and ±Inf, from the bits.
#[inline]
pub fn non_finite(x: f32) -> bool {
    x.to_bits() & 0x7F80_0000 == 0x7F80_0000
}

/// Packs `2n` 4-bit codes into `n` bytes, code `2i` in byte `i`'s low
/// nibble. Pairs are read as little-endian u16 `lo | hi << 8`, whose
/// `(w | w >> 4)` low byte is `lo | hi << 4`: shifts and one narrowing once
/// vectorized, where byte pairs gave per-byte inserts.
#[inline(always)]
pub fn pack_nibbles<const N2: usize, const N: usize>(codes: &[u8; N2]) -> [u8; N] {
    const { assert!(N2 == 2 * N) };
    std::array::from_fn(|i| {
        let w = u16::from_le_bytes([codes[2 * i], codes[2 * i + 1]]);
        (w | w >> 4) as u8
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lg_is_exact_at_binade_edges() {
        assert_eq!(lg(1.0), 0);
        assert_eq!(lg(f32::from_bits(0x3F7F_FFFF)), -1);
        assert_eq!(lg(f32::MAX), 127);
        assert_eq!(lg(f32::from_bits(1)), -149);
        assert_eq!(lg(f32::from_bits(0x0040_0000)), -127);
        assert_eq!(lg(f32::MIN_POSITIVE), -126);
    }

    #[test]
    fn pow2_covers_the_f32_range() {
        assert_eq!(pow2(0), 1.0);
        assert_eq!(pow2(-127).to_bits(), 0x0040_0000);
        assert_eq!(pow2(-149).to_bits(), 1);
        assert_eq!(pow2(127), 2f32.powi(127));
    }

    #[test]
    fn bf16_round_is_rne() {
        assert_eq!(
            bf16_round(f32::from_bits(0x3F80_8000)).to_bits(),
            0x3F80_0000
        );
        assert_eq!(
            bf16_round(f32::from_bits(0x3F81_8000)).to_bits(),
            0x3F82_0000
        );
        assert_eq!(
            bf16_round(f32::from_bits(0x3F80_8001)).to_bits(),
            0x3F81_0000
        );
        assert_eq!(bf16_round(1.0 / 7.0).to_bits(), 0x3E12_0000);
    }
}
