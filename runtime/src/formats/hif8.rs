//! HiFloat8 (SPEC §1): an 8-bit tapered float with no shared scale.
//!
//! The "block" of this format is one element, so HiF8 fits the same
//! [`BlockFormat`] machinery as the 4-bit formats.

use super::BlockFormat;
use std::str::FromStr;

/// One HiF8 code.
#[repr(transparent)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Hif8Code(pub u8);
const _: () = assert!(std::mem::size_of::<Hif8Code>() == 1);

/// Encode rounding (SPEC §1.3).
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub enum Hif8Rounding {
    /// Round to nearest, ties away, overflow to ±Inf (default).
    #[default]
    Ta,
    /// As `Ta`, but every ±Inf result becomes ±32768.
    Saturate,
    /// CANN `CAST_HYBRID` on the f32 bit pattern (intended for gradients).
    Hybrid,
}

impl Hif8Rounding {
    pub const NAMES: &'static [&'static str] = &["ta", "saturate", "hybrid"];
    pub fn name(self) -> &'static str {
        match self {
            Self::Ta => "ta",
            Self::Saturate => "saturate",
            Self::Hybrid => "hybrid",
        }
    }
}

impl FromStr for Hif8Rounding {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "ta" => Ok(Self::Ta),
            "saturate" => Ok(Self::Saturate),
            "hybrid" => Ok(Self::Hybrid),
            _ => Err(()),
        }
    }
}

/// Canonical quiet NaN returned for code `0x80`.
pub const NAN_BITS: u32 = 0x7FC0_0000;

const fn decode_bits(code: u8) -> u32 {
    let s = (code as u32 >> 7) << 31;
    let c = code & 0x7F;
    if code == 0x00 {
        return 0;
    }
    if code == 0x80 {
        return NAN_BITS;
    }
    if c == 0x6F {
        return s | 0x7F80_0000;
    }
    // (exponent field width D, mantissa width M) from the Dot prefix.
    let (d, m) = if c >> 5 == 0b11 {
        (4, 1)
    } else if c >> 5 == 0b10 {
        (3, 2)
    } else if c >> 5 == 0b01 {
        (2, 3)
    } else if c >> 4 == 0b001 {
        (1, 3)
    } else if c >> 3 == 0b0001 {
        (0, 3)
    } else {
        // Denormal: S 0000 mmm, value 2^(mmm - 23), significand exactly 1.
        let e = (c & 7) as i32 - 23;
        return s | (((e + 127) as u32) << 23);
    };
    let mant = (c as u32) & ((1 << m) - 1);
    let e = if d == 0 {
        0
    } else {
        let field = (c as u32 >> m) & ((1 << d) - 1);
        let neg = field >> (d - 1) == 1;
        let t = field & ((1 << (d - 1)) - 1);
        let mag = (1i32 << (d - 1)) + t as i32;
        if neg {
            -mag
        } else {
            mag
        }
    };
    s | (((e + 127) as u32) << 23) | (mant << (23 - m))
}

const fn build_decode() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = decode_bits(i as u8);
        i += 1;
    }
    t
}

const DECODE_TABLE: [u32; 256] = build_decode();

/// The 256-entry decode table: f32 bits of each code (exact).
pub static DECODE_F32_BITS: [u32; 256] = DECODE_TABLE;

/// Decodes one HiF8 code to f32 (exact; NaN is the canonical quiet NaN).
#[inline]
pub fn decode(code: u8) -> f32 {
    f32::from_bits(DECODE_F32_BITS[code as usize])
}

/// Encodes one f32 to HiF8 with the bit-level algorithm of SPEC §1.3, step by
/// step: the reference that [`encode`]'s table is built from and tested against.
pub const fn encode_reference(x: f32, mode: Hif8Rounding) -> u8 {
    let u = x.to_bits();
    let s = (u >> 31) as u8;
    let ef = (u >> 23) & 0xFF;
    let m = u & 0x7F_FFFF;
    let mut ev = ef as i32 - 127;
    let sign = s << 7;
    let ovf = sign
        | if matches!(mode, Hif8Rounding::Saturate) {
            0x6E
        } else {
            0x6F
        };
    let hybrid = matches!(mode, Hif8Rounding::Hybrid);
    let thr = u & 0x3FFF;
    if ef == 255 {
        return if m != 0 { 0x80 } else { ovf };
    }
    if ev > 15 {
        return ovf;
    }
    if ef == 0 || ev < -23 {
        return 0;
    }
    if ev == -23 {
        return if !hybrid || (0x2000 | (m >> 10)) >= thr {
            sign | 0x01
        } else {
            0
        };
    }
    if ev <= -16 {
        let up = if hybrid {
            ((m >> 9) & 0x3FFF) >= thr
        } else {
            (m >> 22) & 1 == 1
        };
        return if !up {
            sign | (ev + 23) as u8
        } else if ev == -16 {
            sign | 0x7E
        } else {
            sign | (ev + 24) as u8
        };
    }
    let n = ev.unsigned_abs();
    let mb = if n <= 3 {
        3
    } else if n <= 7 {
        2
    } else {
        1
    };
    let mut mant = m >> (23 - mb);
    let up = if hybrid && n >= 4 {
        ((m >> (9 - mb)) & 0x3FFF) >= thr
    } else {
        (m >> (22 - mb)) & 1 == 1
    };
    if up {
        mant += 1;
        if mant == 1 << mb {
            mant = 0;
            ev += 1;
            if ev > 15 {
                return ovf;
            }
        }
    }
    if ev == 15 && mant == 1 {
        return ovf;
    }
    let es = (ev < 0) as u8;
    let n = ev.unsigned_abs() as u8;
    let mant = mant as u8;
    sign | match n {
        0 => 0x08 | mant,
        1 => 0x10 | es << 3 | mant,
        2..=3 => 0x20 | (es << 1 | (n - 2)) << 3 | mant,
        4..=7 => 0x40 | (es << 2 | (n - 4)) << 2 | mant,
        _ => 0x60 | (es << 3 | (n - 8)) << 1 | mant,
    }
}

/// In `ta` (and `saturate`) the code depends only on the sign, the exponent
/// and the top 4 mantissa bits (the kept bits plus the one rounding bit; no
/// sticky bit), i.e. on `bits >> 19`, except that a NaN whose payload sits
/// below bit 19 looks like Inf there. So `ta` is one lookup in this table,
/// built by the reference algorithm.
const fn build_ta_table() -> [u8; 8192] {
    let mut t = [0u8; 8192];
    let mut i = 0;
    while i < 8192 {
        t[i] = encode_reference(f32::from_bits((i as u32) << 19), Hif8Rounding::Ta);
        i += 1;
    }
    t
}
/// The `ta` encoding table (public for generated code that encodes with it:
/// the GPU kernels).
pub static TA_TABLE: [u8; 8192] = build_ta_table();

/// Encodes one f32 to HiF8 (SPEC §1.3): a table lookup for `ta` and
/// `saturate`, the reference algorithm for `hybrid`.
#[inline]
pub fn encode(x: f32, mode: Hif8Rounding) -> u8 {
    let u = x.to_bits();
    let c = TA_TABLE[(u >> 19) as usize];
    let c = if u & 0x7FFF_FFFF > 0x7F80_0000 {
        0x80
    } else {
        c
    };
    match mode {
        Hif8Rounding::Ta => c,
        // Saturate differs from ta only in turning ±Inf into ±32768.
        Hif8Rounding::Saturate => c - (c & 0x7F == 0x6F) as u8,
        Hif8Rounding::Hybrid => encode_reference(x, mode),
    }
}

/// HiFloat8 as a [`BlockFormat`] with one-element blocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct Hif8;

impl BlockFormat for Hif8 {
    type Block = Hif8Code;
    type Mode = Hif8Rounding;
    const NAME: &'static str = "hif8";
    const BLOCK_LEN: usize = 1;

    #[inline]
    fn quantize_block(x: &[f32], mode: Hif8Rounding) -> Hif8Code {
        Hif8Code(x.first().map_or(0, |&v| encode(v, mode)))
    }

    #[inline(always)]
    fn quantize_row(x: &[f32], mode: Hif8Rounding, out: &mut [Hif8Code]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = Hif8Code(encode(v, mode));
        }
    }

    #[inline]
    fn dequantize_block(block: &Hif8Code, out: &mut [f32]) {
        if let Some(o) = out.first_mut() {
            *o = decode(block.0);
        }
    }
}

/// Every finite non-zero code as `sig * 2^exp` with `sig` odd (at most 4 bits),
/// for the exact dot product; `(0, 0)` for zero and the specials.
const fn build_sig_exp() -> [(i8, i8); 256] {
    let mut t = [(0i8, 0i8); 256];
    let mut i = 0;
    while i < 256 {
        let b = DECODE_TABLE[i];
        let ef = (b >> 23) & 0xFF;
        if b & 0x7FFF_FFFF != 0 && ef != 0xFF {
            let mut sig = ((1u32 << 23) | (b & 0x7F_FFFF)) as i32;
            let mut exp = ef as i32 - 127 - 23;
            while sig & 1 == 0 {
                sig >>= 1;
                exp += 1;
            }
            if b >> 31 == 1 {
                sig = -sig;
            }
            t[i] = (sig as i8, exp as i8);
        }
        i += 1;
    }
    t
}
static SIG_EXP: [(i8, i8); 256] = build_sig_exp();

fn is_special(code: u8) -> bool {
    code == 0x80 || code & 0x7F == 0x6F
}

/// Reference dot product of two HiF8 vectors through exact widening: every
/// product is exact, the sum is accumulated exactly in fixed point (i128, LSB
/// 2^-44, the smallest product's LSB) and rounded once to f64. NaN or Inf
/// codes fall back to IEEE f64 arithmetic so that they propagate as IEEE says.
pub fn dot(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len(), "hif8::dot: length mismatch");
    if a.iter().chain(b).any(|&c| is_special(c)) {
        return a
            .iter()
            .zip(b)
            .map(|(&x, &y)| decode(x) as f64 * decode(y) as f64)
            .sum();
    }
    let mut acc: i128 = 0;
    for (&x, &y) in a.iter().zip(b) {
        let (sa, ea) = SIG_EXP[x as usize];
        let (sb, eb) = SIG_EXP[y as usize];
        let p = sa as i128 * sb as i128;
        if p != 0 {
            acc += p << (ea as i32 + eb as i32 + 44);
        }
    }
    acc as f64 * 2f64.powi(-44)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_examples() {
        use Hif8Rounding::*;
        let cases: [(f32, [u8; 3]); 5] = [
            (1.0625, [0x09, 0x09, 0x09]),
            (16.0, [0x40, 0x40, 0x41]),
            (32768.0, [0x6E, 0x6E, 0x6F]),
            (40960.0, [0x6F, 0x6E, 0x6F]),
            (2f32.powi(-16), [0x07, 0x07, 0x7E]),
        ];
        for (x, want) in cases {
            assert_eq!(
                [encode(x, Ta), encode(x, Saturate), encode(x, Hybrid)],
                want,
                "{x}"
            );
        }
    }

    #[test]
    fn table_encode_equals_reference() {
        let mut u = 0x2545_F491_4F6C_DD1Du64;
        for i in 0..2_000_000u64 {
            u ^= u << 13;
            u ^= u >> 7;
            u ^= u << 17;
            // Every 19-bit-aligned pattern, then random bits.
            let bits = if i < 8192 {
                (i as u32) << 19 | 0x4_0000
            } else {
                u as u32
            };
            let x = f32::from_bits(bits);
            for mode in [
                Hif8Rounding::Ta,
                Hif8Rounding::Saturate,
                Hif8Rounding::Hybrid,
            ] {
                assert_eq!(
                    encode(x, mode),
                    encode_reference(x, mode),
                    "{bits:08X} {mode:?}"
                );
            }
        }
    }

    #[test]
    fn decode_counts() {
        let vals: Vec<f32> = (0..=255u8).map(decode).collect();
        assert_eq!(vals.iter().filter(|v| v.is_nan()).count(), 1);
        assert_eq!(vals.iter().filter(|v| v.is_infinite()).count(), 2);
        assert_eq!(decode(0x6E), 32768.0);
        assert_eq!(decode(0x01), 2f32.powi(-22));
        assert_eq!(decode(0x7E), 2f32.powi(-15));
    }

    #[test]
    fn sig_exp_reconstructs_every_finite_code() {
        for c in 0..=255u8 {
            if is_special(c) {
                continue;
            }
            let (s, e) = SIG_EXP[c as usize];
            assert_eq!(
                s as f64 * 2f64.powi(e as i32),
                decode(c) as f64,
                "code {c:#04x}"
            );
            assert!(e as i32 >= -22 && (s.unsigned_abs()) < 16);
        }
    }
}
