//! MXFP4, OCP MX v1.0 (SPEC §2): 32 E2M1 elements sharing one E8M0 scale.

use super::bits::{non_finite, pack_nibbles, pow2};
use super::BlockFormat;
use std::str::FromStr;

/// One packed MXFP4 block: the E8M0 scale byte, then 16 data bytes with
/// element 2k in the low nibble of byte k.
#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Mxfp4Block {
    pub scale: u8,
    pub data: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<Mxfp4Block>() == 17);
const _: () = assert!(std::mem::align_of::<Mxfp4Block>() == 1);

/// Element rounding (SPEC §2.2).
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub enum Mxfp4Rounding {
    /// Round to nearest, ties to even (OCP, default).
    #[default]
    Rne,
    /// Round to nearest, ties away from zero (microxcaling / consortium).
    TiesAway,
}

impl Mxfp4Rounding {
    pub const NAMES: &'static [&'static str] = &["rne", "ties-away"];
    pub fn name(self) -> &'static str {
        match self {
            Self::Rne => "rne",
            Self::TiesAway => "ties-away",
        }
    }
}

impl FromStr for Mxfp4Rounding {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "rne" => Ok(Self::Rne),
            "ties-away" | "ties_away" => Ok(Self::TiesAway),
            _ => Err(()),
        }
    }
}

/// E2M1 code -> value; code 8 is -0.
pub const E2M1_VALUES: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// E2M1 code -> 2 x value as int8: the table of the integer dot product (§2.6).
pub const E2M1_X2: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// Decodes an E8M0 scale byte: 2^(e - 127), NaN for `0xFF`.
#[inline]
pub fn e8m0_to_f32(e: u8) -> f32 {
    if e == 0xFF {
        f32::NAN
    } else {
        pow2(e as i32 - 127)
    }
}

/// Magnitude code (0..=7) of a non-negative `r` by the intervals of §2.2.
/// Every comparison is exact, so there is no `floor(2r + 0.5)` artifact.
#[inline(always)]
fn magnitude_code(r: f32, mode: Mxfp4Rounding) -> u8 {
    match mode {
        Mxfp4Rounding::Rne => {
            (r > 0.25) as u8
                + (r >= 0.75) as u8
                + (r > 1.25) as u8
                + (r >= 1.75) as u8
                + (r > 2.5) as u8
                + (r >= 3.5) as u8
                + (r > 5.0) as u8
        }
        Mxfp4Rounding::TiesAway => {
            (r >= 0.25) as u8
                + (r >= 0.75) as u8
                + (r >= 1.25) as u8
                + (r >= 1.75) as u8
                + (r >= 2.5) as u8
                + (r >= 3.5) as u8
                + (r >= 5.0) as u8
        }
    }
}

/// The standalone E2M1 element cast of §2.2 (`vectors/e2m1_encode.csv`):
/// the sign bit of `x`, and the magnitude by the intervals, saturating at 6.
/// NaN has no element code (it is handled at block level) and gives a signed 0.
#[inline]
pub fn encode_e2m1(x: f32, mode: Mxfp4Rounding) -> u8 {
    ((x.to_bits() >> 31) as u8) << 3 | magnitude_code(x.abs(), mode)
}

/// MXFP4 as a [`BlockFormat`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Mxfp4;

impl BlockFormat for Mxfp4 {
    type Block = Mxfp4Block;
    type Mode = Mxfp4Rounding;
    const NAME: &'static str = "mxfp4";
    const BLOCK_LEN: usize = 32;

    #[inline(always)]
    fn quantize_block(x: &[f32], mode: Mxfp4Rounding) -> Mxfp4Block {
        // Full blocks are read in place; a short one is copied and zero-padded.
        let mut pad = [0f32; 32];
        let v: &[f32; 32] = match x.try_into() {
            Ok(full) => full,
            Err(_) => {
                pad[..x.len()].copy_from_slice(x);
                &pad
            }
        };
        // Step 2: amax from the integer maximum of the magnitudes' bits; any
        // magnitude >= 0x7F800000 is NaN or Inf (step 1).
        let mut amax_bits = 0u32;
        for e in v {
            amax_bits = amax_bits.max(e.to_bits() & 0x7FFF_FFFF);
        }
        if amax_bits >= 0x7F80_0000 {
            // Step 1: the filler is the encoding with non-finite elements
            // replaced by +0 (rare, so kept out of the main path).
            return poisoned(v, mode);
        }
        encode_finite(v, amax_bits, mode)
    }

    #[inline(always)]
    fn dequantize_block(block: &Mxfp4Block, out: &mut [f32]) {
        if block.scale == 0xFF {
            out.fill(f32::NAN);
            return;
        }
        let scale = pow2(block.scale as i32 - 127);
        for (i, o) in out.iter_mut().enumerate() {
            let code = (block.data[i / 2] >> (4 * (i % 2))) & 0xF;
            *o = E2M1_VALUES[code as usize] * scale;
        }
    }
}

/// Steps 3 and 4 of §2.2 for a block of finite values with the given amax bits.
#[inline(always)]
fn encode_finite(v: &[f32; 32], amax_bits: u32, mode: Mxfp4Rounding) -> Mxfp4Block {
    // Step 3: E = max(e_f(amax) - 2, 0), se = E - 127.
    let e = (amax_bits >> 23).saturating_sub(2);
    let inv = pow2(127 - e as i32);
    // Step 4: r = x * 2^-se is exact whenever |r| >= 2^-126; smaller values
    // round to code 0 anyway.
    let mut codes = [0u8; 32];
    for (c, x) in codes.iter_mut().zip(v) {
        let b = x.to_bits();
        let r = f32::from_bits(b & 0x7FFF_FFFF) * inv;
        *c = ((b >> 31) as u8) << 3 | magnitude_code(r, mode);
    }
    Mxfp4Block {
        scale: e as u8,
        data: pack_nibbles(&codes),
    }
}

#[cold]
fn poisoned(v: &[f32; 32], mode: Mxfp4Rounding) -> Mxfp4Block {
    let filler = v.map(|e| if non_finite(e) { 0.0 } else { e });
    let amax_bits = filler
        .iter()
        .fold(0, |m, e| m.max(e.to_bits() & 0x7FFF_FFFF));
    Mxfp4Block {
        scale: 0xFF,
        ..encode_finite(&filler, amax_bits, mode)
    }
}

impl Mxfp4Block {
    /// Element code i (0..32).
    #[inline]
    pub fn code(&self, i: usize) -> u8 {
        (self.data[i / 2] >> (4 * (i % 2))) & 0xF
    }
}

/// Reference dot product of two blocks through the integer identity of §2.6:
/// `Σ L[a_i]·L[b_i] · 2^(Ea+Eb-256)`. The result is exact in f64; NaN if
/// either block is poisoned.
pub fn block_dot(a: &Mxfp4Block, b: &Mxfp4Block) -> f64 {
    if a.scale == 0xFF || b.scale == 0xFF {
        return f64::NAN;
    }
    let isum: i32 = (0..32)
        .map(|i| E2M1_X2[a.code(i) as usize] as i32 * E2M1_X2[b.code(i) as usize] as i32)
        .sum();
    isum as f64 * 2f64.powi(a.scale as i32 + b.scale as i32 - 256)
}

/// Reference dot product of two block rows: exact block results summed in f64.
pub fn dot(a: &[Mxfp4Block], b: &[Mxfp4Block]) -> f64 {
    assert_eq!(a.len(), b.len(), "mxfp4::dot: length mismatch");
    a.iter().zip(b).map(|(x, y)| block_dot(x, y)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_packing_example() {
        let mut x = [0f32; 32];
        x[..8].copy_from_slice(&[4.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]);
        let rne = Mxfp4::quantize_block(&x, Mxfp4Rounding::Rne);
        let away = Mxfp4::quantize_block(&x, Mxfp4Rounding::TiesAway);
        assert_eq!(rne.scale, 0x7F);
        assert_eq!(rne.data[..4], [0x06, 0x22, 0x44, 0x66]);
        assert_eq!(away.data[..4], [0x16, 0x32, 0x54, 0x76]);
    }

    #[test]
    fn short_input_is_zero_padded() {
        let b = Mxfp4::quantize_block(&[6.0, -1.0], Mxfp4Rounding::Rne);
        let mut full = [0f32; 32];
        full[0] = 6.0;
        full[1] = -1.0;
        assert_eq!(b, Mxfp4::quantize_block(&full, Mxfp4Rounding::Rne));
    }
}
