//! HiFloat4 (SPEC §3): 64-element units of S1P2 elements with an E6M2 scale and
//! two levels of 1-bit micro-exponents (per 8 and per 4 elements).

use super::bits::{bf16_round, lg, non_finite, pack_nibbles, pow2};
use super::BlockFormat;
use std::str::FromStr;

/// One packed HiF4 unit in the AMCT `hif4_pack` layout (§3.3):
/// `meta[0]` E6M2 scale (`0xFF` = poisoned), `meta[1]` E1_8 (group 0 in the
/// MSB), `meta[2..4]` E1_16 (subgroup 0 in the MSB of `meta[2]`), then 32 data
/// bytes with element 2k in the low nibble of byte k.
#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Hif4Unit {
    pub meta: [u8; 4],
    pub data: [u8; 32],
}
const _: () = assert!(std::mem::size_of::<Hif4Unit>() == 36);
const _: () = assert!(std::mem::align_of::<Hif4Unit>() == 1);

/// Encoder variant (§3.4): they differ only in AMCT's bf16 rounding of t.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub enum Hif4Variant {
    /// The global-computing-consortium HiFloat4 library, with AMCT's poison
    /// and zero-sign rules (default).
    #[default]
    Consortium,
    /// AMCT's `hif4_encode` / NPU kernel.
    Amct,
}

impl Hif4Variant {
    pub const NAMES: &'static [&'static str] = &["consortium", "amct"];
    pub fn name(self) -> &'static str {
        match self {
            Self::Consortium => "consortium",
            Self::Amct => "amct",
        }
    }
}

impl FromStr for Hif4Variant {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "consortium" => Ok(Self::Consortium),
            "amct" => Ok(Self::Amct),
            _ => Err(()),
        }
    }
}

/// Decodes an E6M2 scale byte: 2^((b>>2) - 48) · (1 + (b&3)/4); NaN for `0xFF`.
#[inline]
pub fn e6m2_to_f32(b: u8) -> f32 {
    if b == 0xFF {
        return f32::NAN;
    }
    pow2((b >> 2) as i32 - 48) * (1.0 + (b & 3) as f32 * 0.25)
}

/// S1P2 nibble -> value; nibble 8 is -0.
pub const S1P2_VALUES: [f32; 16] = [
    0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, -0.0, -0.25, -0.5, -0.75, -1.0, -1.25, -1.5, -1.75,
];

/// bf16(fl32(1/7)) = 73/512.
const D7: f32 = 0.142_578_13;
const S_MIN: f32 = pow2(-48);
const S_MAX: f32 = 49152.0;

/// HiFloat4 as a [`BlockFormat`] (a block is a unit).
#[derive(Clone, Copy, Debug, Default)]
pub struct Hif4;

impl Hif4Unit {
    /// E1_8 bit of group g (0..8).
    #[inline]
    pub fn e1_8(&self, g: usize) -> u8 {
        (self.meta[1] >> (7 - g)) & 1
    }
    /// E1_16 bit of subgroup h (0..16).
    #[inline]
    pub fn e1_16(&self, h: usize) -> u8 {
        (self.meta[2 + h / 8] >> (7 - h % 8)) & 1
    }
    /// Nibble of element i (0..64).
    #[inline]
    pub fn nibble(&self, i: usize) -> u8 {
        (self.data[i / 2] >> (4 * (i % 2))) & 0xF
    }
    /// The integer codes of the dot product identity (§3.6):
    /// `a_i = ±(c_i << (E1_8 + E1_16))`, in [-28, 28].
    pub fn int_codes(&self) -> [i8; 64] {
        std::array::from_fn(|i| {
            let n = self.nibble(i);
            let mag = ((n & 7) << (self.e1_8(i / 8) + self.e1_16(i / 4))) as i8;
            if n & 8 != 0 {
                -mag
            } else {
                mag
            }
        })
    }
}

impl BlockFormat for Hif4 {
    type Block = Hif4Unit;
    type Mode = Hif4Variant;
    const NAME: &'static str = "hif4";
    const BLOCK_LEN: usize = 64;

    #[inline(always)]
    fn quantize_block(x: &[f32], variant: Hif4Variant) -> Hif4Unit {
        // Full units are read in place; a short one is copied and zero-padded.
        let mut pad = [0f32; 64];
        let v: &[f32; 64] = match x.try_into() {
            Ok(full) => full,
            Err(_) => {
                pad[..x.len()].copy_from_slice(x);
                &pad
            }
        };
        // A magnitude >= 0x7F800000 is NaN or Inf.
        let amax_bits = v.iter().fold(0u32, |m, e| m.max(e.to_bits() & 0x7FFF_FFFF));
        if amax_bits >= 0x7F80_0000 {
            return poisoned(v, variant);
        }
        encode_finite(v, variant)
    }

    #[inline(always)]
    fn dequantize_block(unit: &Hif4Unit, out: &mut [f32]) {
        if unit.meta[0] == 0xFF {
            out.fill(f32::NAN);
            return;
        }
        let s = e6m2_to_f32(unit.meta[0]);
        for (i, o) in out.iter_mut().enumerate() {
            let d = (unit.e1_8(i / 8) + unit.e1_16(i / 4)) as i32;
            *o = S1P2_VALUES[unit.nibble(i) as usize] * pow2(d) * s;
        }
    }
}

/// Steps 4 to 6 of §3.4 for a unit whose largest magnitude is `vmax`: the
/// E6M2 scale byte and the bf16 reciprocal of its value.
#[inline(always)]
pub(crate) fn unit_scale(vmax: f32) -> (u8, f32) {
    // Step 4: scale seed sf = bf16(fl32(vmax · D7)), clamped.
    let sf = bf16_round(vmax * D7).clamp(S_MIN, S_MAX);
    // Step 5: E6M2 rounding, RNE on y = sf·2^(2-e) = 4 + t/32 in [4, 8).
    let mut e = lg(sf);
    let n = 128 + ((sf.to_bits() >> 16) & 0x7F);
    let (mut q, rem) = (n >> 5, n & 31);
    if rem > 16 || (rem == 16 && q & 1 == 1) {
        q += 1;
    }
    if q == 8 {
        q = 4;
        e += 1;
    }
    let scale_byte = (4 * (e + 48) + (q as i32 - 4)) as u8;
    // Step 6: the reciprocal of s = q·2^(e-2) rounded to bf16, without a
    // division: bf16(1/s) = bf16(1/q)·2^(2-e) exactly (e in [-48, 15]
    // keeps both sides normal, where rounding commutes with powers of two).
    (scale_byte, RECIP_Q[q as usize - 4] * pow2(2 - e))
}

/// `bf16_round(1 / q)` for the E6M2 significands q = 4..=7 (checked by a
/// test against the division); 1/7's is [`D7`].
const RECIP_Q: [f32; 4] = [
    f32::from_bits(0x3E80_0000),
    f32::from_bits(0x3E4D_0000),
    f32::from_bits(0x3E2B_0000),
    D7,
];

/// Steps 2 to 9 of §3.4 for a unit of finite values.
#[inline(always)]
fn encode_finite(v: &[f32; 64], variant: Hif4Variant) -> Hif4Unit {
    // Step 2: magnitudes, and signs s = 1 iff x < 0 (so -0.0 has s = 0).
    // Magnitudes as bits: for finite non-negative floats the integer order
    // is the float order, and integer maxima vectorize.
    let ab: [u32; 64] = v.map(|e| e.to_bits() & 0x7FFF_FFFF);
    let a: [f32; 64] = ab.map(f32::from_bits);
    let neg: [u8; 64] = v.map(|e| ((e < 0.0) as u8) << 3);
    // Step 3: maxima per subgroup of 4 and group of 8.
    let m4: [u32; 16] = std::array::from_fn(|h| {
        let s = &ab[4 * h..4 * h + 4];
        s[0].max(s[1]).max(s[2].max(s[3]))
    });
    let m8: [u32; 8] = std::array::from_fn(|g| m4[2 * g].max(m4[2 * g + 1]));
    let (v4, v8) = (m4.map(f32::from_bits), m8.map(f32::from_bits));
    let vmax = f32::from_bits(m8.iter().fold(0u32, |m, &v| m.max(v)));
    let (scale_byte, rec) = unit_scale(vmax);
    // Step 7: micro-exponents.
    let e1_8: [u8; 8] = std::array::from_fn(|g| (v8[g] * rec >= 4.0) as u8);
    let e1_16: [u8; 16] =
        std::array::from_fn(|h| (v4[h] * rec >= 2.0 * (1 + e1_8[h / 2]) as f32) as u8);
    // Step 8: elements, c = min(7, ⌊t·4 + 1/2⌋) for t = m·2^(-d), with the
    // power of two built from bits (exact); every value is >= 0.5.
    let base = match variant {
        Hif4Variant::Consortium => 129, // 2^(2-d)
        Hif4Variant::Amct => 127,       // 2^(-d)
    };
    // Per subgroup of 4 (u32 lanes: spreading them over the elements is a
    // permute, where u8 lanes were byte inserts).
    let d4: [u32; 16] = std::array::from_fn(|h| (e1_8[h / 2] + e1_16[h]) as u32);
    let pw: [f32; 64] = std::array::from_fn(|i| f32::from_bits((base - d4[i / 4]) << 23));
    let mut nib = [0u8; 64];
    match variant {
        Hif4Variant::Consortium => {
            for i in 0..64 {
                let y = (a[i] * rec) * pw[i] + 0.5;
                nib[i] = neg[i] | floor_to_7(y);
            }
        }
        Hif4Variant::Amct => {
            for i in 0..64 {
                let y = 4.0 * bf16_round((a[i] * rec) * pw[i]) + 0.5;
                nib[i] = neg[i] | floor_to_7(y);
            }
        }
    }
    // Packing (§3.3).
    let mut meta = [scale_byte, 0, 0, 0];
    for g in 0..8 {
        meta[1] |= e1_8[g] << (7 - g);
    }
    for h in 0..16 {
        meta[2 + h / 8] |= e1_16[h] << (7 - h % 8);
    }
    Hif4Unit {
        meta,
        data: pack_nibbles(&nib),
    }
}

/// `min(7, ⌊y⌋)` for `y >= 0` as a count of comparisons (they vectorize;
/// a saturating float-to-int cast does not).
#[inline(always)]
fn floor_to_7(y: f32) -> u8 {
    (y >= 1.0) as u8
        + (y >= 2.0) as u8
        + (y >= 3.0) as u8
        + (y >= 4.0) as u8
        + (y >= 5.0) as u8
        + (y >= 6.0) as u8
        + (y >= 7.0) as u8
}

/// Step 1: non-finite elements poison the unit; the filler is the encoding
/// with them replaced by +0 (rare, kept off the main path).
#[cold]
fn poisoned(v: &[f32; 64], variant: Hif4Variant) -> Hif4Unit {
    let filler = v.map(|e| if non_finite(e) { 0.0 } else { e });
    let mut unit = encode_finite(&filler, variant);
    unit.meta[0] = 0xFF;
    unit
}

/// Reference dot product of two units through the integer identity of §3.6:
/// `(Σ a_i·b_i) · S_A · S_B / 16`, exact in f64; NaN if either is poisoned.
pub fn unit_dot(a: &Hif4Unit, b: &Hif4Unit) -> f64 {
    if a.meta[0] == 0xFF || b.meta[0] == 0xFF {
        return f64::NAN;
    }
    let (ia, ib) = (a.int_codes(), b.int_codes());
    let isum: i32 = ia.iter().zip(&ib).map(|(&x, &y)| x as i32 * y as i32).sum();
    isum as f64 * e6m2_to_f32(a.meta[0]) as f64 * e6m2_to_f32(b.meta[0]) as f64 / 16.0
}

/// Reference dot product of two unit rows: exact unit results summed in f64.
pub fn dot(a: &[Hif4Unit], b: &[Hif4Unit]) -> f64 {
    assert_eq!(a.len(), b.len(), "hif4::dot: length mismatch");
    a.iter().zip(b).map(|(x, y)| unit_dot(x, y)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table-and-power-of-two reciprocal of `unit_scale` equals the
    /// division it replaces for every scale: each E6M2 value q·2^(e-2)
    /// that the clamped seed can round to (e = -48..=15, q = 4..=7).
    #[test]
    fn unit_scale_reciprocal_is_the_rounded_division() {
        for (q, r) in (4..=7).zip(RECIP_Q) {
            assert_eq!(r, bf16_round(1.0 / q as f32), "q = {q}");
        }
        let mut seen = 0;
        for e in -48..=15 {
            for q in 4..=7u32 {
                let s = q as f32 * pow2(e - 2);
                if !(S_MIN..=S_MAX).contains(&s) {
                    continue;
                }
                let (byte, rec) = unit_scale(s / D7);
                let want = bf16_round(1.0 / e6m2_to_f32(byte));
                assert_eq!(rec.to_bits(), want.to_bits(), "scale {s:e} (byte {byte})");
                seen += 1;
            }
        }
        assert!(seen > 200, "{seen} scales");
    }

    #[test]
    fn d7_is_bf16_of_one_seventh() {
        assert_eq!(D7.to_bits(), 0x3E12_0000);
        assert_eq!(bf16_round(1.0f32 / 7.0), D7);
    }

    #[test]
    fn spec_worked_example() {
        let mut x = [0f32; 64];
        let ramp = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75];
        // 7, then the ramp 0, 0.25, ..., 1.75 repeated (`r:max_7_exact_unit_scale`).
        x[0] = 7.0;
        for (i, v) in x.iter_mut().enumerate().skip(1) {
            *v = ramp[(i - 1) % 8];
        }
        let u = Hif4::quantize_block(&x, Hif4Variant::Consortium);
        assert_eq!(u.meta, [0xC0, 0x80, 0x80, 0x00]);
        assert_eq!(u.data[..4], [0x07, 0x10, 0x22, 0x33]);
    }

    #[test]
    fn all_zero_unit_is_all_zero_bytes() {
        let mut x = [0f32; 64];
        x[3] = -0.0;
        assert_eq!(
            Hif4::quantize_block(&x, Hif4Variant::Amct),
            Hif4Unit::default()
        );
    }
}
