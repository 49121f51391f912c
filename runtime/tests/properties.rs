//! Property tests of the reference formats (SPEC §1–§3): rounding to the
//! nearest representable value, monotonicity, exact round trips, poisoning and
//! the integer dot-product identities.

use lpc_runtime::formats::{
    hif4, hif8, mxfp4, AxisLayout, BlockFormat, Format, Hif4, Hif4Unit, Hif4Variant, Hif8Rounding,
    Mxfp4, Mxfp4Block, Mxfp4Rounding,
};
use proptest::prelude::*;

/// The 253 finite HiF8 values, ascending.
fn hif8_finite() -> Vec<f32> {
    let mut v: Vec<f32> = (0..=255u8)
        .map(hif8::decode)
        .filter(|x| x.is_finite())
        .collect();
    v.sort_by(f32::total_cmp);
    v
}

/// Finite f32 of any binade that HiF8 covers, both signs.
fn hif8_range() -> impl Strategy<Value = f32> {
    (any::<bool>(), -26i32..16, 0u32..(1 << 23)).prop_map(|(neg, e, m)| {
        let v = f32::from_bits(((e + 127) as u32) << 23 | m);
        if neg {
            -v
        } else {
            v
        }
    })
}

fn mx_mode() -> impl Strategy<Value = Mxfp4Rounding> {
    prop_oneof![Just(Mxfp4Rounding::Rne), Just(Mxfp4Rounding::TiesAway)]
}

fn hif4_variant() -> impl Strategy<Value = Hif4Variant> {
    prop_oneof![Just(Hif4Variant::Consortium), Just(Hif4Variant::Amct)]
}

/// Blocks of Gaussian-ish values at a random scale, with a few exact zeros.
fn block(n: usize) -> impl Strategy<Value = Vec<f32>> {
    (
        -100i32..100,
        prop::collection::vec((-1000i32..1000, 0u8..10), n),
    )
        .prop_map(|(e, v)| {
            v.into_iter()
                .map(|(m, z)| {
                    if z == 0 {
                        0.0
                    } else {
                        m as f32 / 256.0 * 2f32.powi(e)
                    }
                })
                .collect()
        })
}

fn mx_block_bytes() -> impl Strategy<Value = Mxfp4Block> {
    (0u8..=0xFC, prop::array::uniform16(any::<u8>()))
        .prop_map(|(scale, data)| Mxfp4Block { scale, data })
}

fn hif4_unit_bytes() -> impl Strategy<Value = Hif4Unit> {
    (
        0u8..=0xFE,
        prop::array::uniform3(any::<u8>()),
        prop::collection::vec(any::<u8>(), 32),
    )
        .prop_map(|(s, m, d)| Hif4Unit {
            meta: [s, m[0], m[1], m[2]],
            data: d.try_into().unwrap(),
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// `ta`: the nearest finite HiF8 value, ties to the larger magnitude;
    /// `saturate` agrees below the overflow threshold.
    #[test]
    fn hif8_ta_is_nearest(x in hif8_range()) {
        prop_assume!(x.abs() < 40960.0);
        let vals = hif8_finite();
        let got = hif8::decode(hif8::encode(x, Hif8Rounding::Ta)) as f64;
        let xd = x as f64;
        for &c in &vals {
            let (dc, dg) = ((xd - c as f64).abs(), (xd - got).abs());
            prop_assert!(dg < dc || (dg == dc && got.abs() >= (c as f64).abs()),
                "x={x:e}: got {got:e}, but {c:e} is nearer or equal and larger");
        }
        prop_assert_eq!(hif8::encode(x, Hif8Rounding::Saturate), hif8::encode(x, Hif8Rounding::Ta));
    }

    /// `hybrid` always returns one of the two neighbours of x.
    #[test]
    fn hif8_hybrid_is_a_neighbour(x in hif8_range()) {
        prop_assume!(x.abs() < 32768.0);
        let vals = hif8_finite();
        let got = hif8::decode(hif8::encode(x, Hif8Rounding::Hybrid));
        let below = vals.iter().rev().find(|&&c| c <= x).copied();
        let above = vals.iter().find(|&&c| c >= x).copied();
        prop_assert!(Some(got) == below || Some(got) == above, "x={x:e} got {got:e}");
    }

    #[test]
    fn hif8_encode_is_monotone(a in hif8_range(), b in hif8_range()) {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        for mode in [Hif8Rounding::Ta, Hif8Rounding::Saturate] {
            prop_assert!(hif8::decode(hif8::encode(lo, mode)) <= hif8::decode(hif8::encode(hi, mode)));
        }
    }

    /// Every element decodes to the nearest point of the block's grid
    /// {±v·2^se}, saturating at 6·2^se, with ties by the rounding mode.
    #[test]
    fn mxfp4_elements_are_nearest_on_the_block_grid(x in block(32), mode in mx_mode()) {
        let b = Mxfp4::quantize_block(&x, mode);
        let mut y = [0f32; 32];
        Mxfp4::dequantize_block(&b, &mut y);
        let scale = mxfp4::e8m0_to_f32(b.scale) as f64;
        for i in 0..32 {
            let (xi, yi) = (x[i] as f64, y[i] as f64);
            prop_assert_eq!(y[i].is_sign_negative(), x[i].is_sign_negative());
            for v in mxfp4::E2M1_VALUES {
                let g = v.abs() as f64 * scale * xi.signum();
                let (dg, dy) = ((xi - g).abs(), (xi - yi).abs());
                prop_assert!(dy <= dg, "element {i}: {xi:e} -> {yi:e}, {g:e} is nearer");
                if dy == dg && g != yi {
                    let code = b.code(i) & 7;
                    match mode {
                        Mxfp4Rounding::Rne => prop_assert_eq!(code & 1, 0, "tie not to even"),
                        Mxfp4Rounding::TiesAway => prop_assert!(yi.abs() > g.abs(), "tie not away"),
                    }
                }
            }
        }
    }

    #[test]
    fn e2m1_is_monotone(a in -8f32..8.0, b in -8f32..8.0, mode in mx_mode()) {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let v = |x| mxfp4::E2M1_VALUES[mxfp4::encode_e2m1(x, mode) as usize];
        prop_assert!(v(lo) <= v(hi));
    }

    /// Decoded blocks are representable: quantizing them again gives the same values.
    #[test]
    fn mxfp4_representable_values_round_trip(b in mx_block_bytes(), mode in mx_mode()) {
        let mut y = [0f32; 32];
        Mxfp4::dequantize_block(&b, &mut y);
        let mut z = [0f32; 32];
        Mxfp4::dequantize_block(&Mxfp4::quantize_block(&y, mode), &mut z);
        prop_assert_eq!(y.map(f32::to_bits), z.map(f32::to_bits));
    }

    /// Non-saturated elements stay within the bound of SPEC §3.5, and within a
    /// subgroup the encoding is monotone.
    #[test]
    fn hif4_error_bound_and_monotone(x in block(64), v in hif4_variant()) {
        let u = Hif4::quantize_block(&x, v);
        let mut y = [0f32; 64];
        Hif4::dequantize_block(&u, &mut y);
        let s = hif4::e6m2_to_f32(u.meta[0]) as f64;
        let bound = match v { Hif4Variant::Consortium => 0.129, Hif4Variant::Amct => 0.135 };
        for i in 0..64 {
            let d = (u.e1_8(i / 8) + u.e1_16(i / 4)) as i32;
            if u.nibble(i) & 7 < 7 {
                let err = (x[i] as f64 - y[i] as f64).abs();
                prop_assert!(err <= bound * 2f64.powi(d) * s, "element {i}: {} -> {}", x[i], y[i]);
            }
        }
        for h in 0..16 {
            for i in 4 * h..4 * h + 4 {
                for j in 4 * h..4 * h + 4 {
                    if x[i] <= x[j] {
                        prop_assert!(y[i] <= y[j]);
                    }
                }
            }
        }
    }

    /// Units of values n/4 · 2^k (|n| <= 7, one |n| = 7) are representable
    /// (with S = 2^(k-2) and micro-exponents) and round-trip exactly.
    #[test]
    fn hif4_representable_values_round_trip(
        k in -45i32..14,
        n in prop::collection::vec(-7i32..=7, 64),
        at in 0usize..64,
        v in hif4_variant(),
    ) {
        let mut x: Vec<f32> = n.iter().map(|&n| n as f32 / 4.0 * 2f32.powi(k)).collect();
        x[at] = 1.75 * 2f32.powi(k);
        let u = Hif4::quantize_block(&x, v);
        let mut y = [0f32; 64];
        Hif4::dequantize_block(&u, &mut y);
        prop_assert_eq!(hif4::e6m2_to_f32(u.meta[0]), 2f32.powi(k - 2));
        prop_assert_eq!(&y[..], &x[..]);
    }

    /// A non-finite element poisons the block: the filler is the encoding with
    /// those elements replaced by +0, and everything decodes to NaN.
    #[test]
    fn poisoned_blocks(x in block(64), at in 0usize..64, which in 0u8..3, v in hif4_variant(), m in mx_mode()) {
        let bad = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][which as usize];
        let mut poisoned = x.clone();
        poisoned[at] = bad;
        let mut filler = x.clone();
        filler[at] = 0.0;

        let u = Hif4::quantize_block(&poisoned, v);
        let mut want = Hif4::quantize_block(&filler, v);
        want.meta[0] = 0xFF;
        prop_assert_eq!(u, want);
        let mut y = [0f32; 64];
        Hif4::dequantize_block(&u, &mut y);
        prop_assert!(y.iter().all(|v| v.is_nan()));

        let (p32, f32_) = (&poisoned[at / 32 * 32..][..32], &filler[at / 32 * 32..][..32]);
        let b = Mxfp4::quantize_block(p32, m);
        let mut want = Mxfp4::quantize_block(f32_, m);
        want.scale = 0xFF;
        prop_assert_eq!(b, want);
        let mut y = [0f32; 32];
        Mxfp4::dequantize_block(&b, &mut y);
        prop_assert!(y.iter().all(|v| v.is_nan()));

        let c = hif8::encode(bad, Hif8Rounding::Ta);
        let s = hif8::encode(bad, Hif8Rounding::Saturate);
        match which {
            0 => prop_assert!(c == 0x80 && s == 0x80),
            1 => prop_assert!(c == 0x6F && s == 0x6E),
            _ => prop_assert!(c == 0xEF && s == 0xEE),
        }
    }

    /// The integer identities equal the f64 dot of the dequantized values exactly.
    #[test]
    fn mxfp4_and_hif4_dot_identities(a in mx_block_bytes(), b in mx_block_bytes(),
                                     ua in hif4_unit_bytes(), ub in hif4_unit_bytes()) {
        let (mut x, mut y) = ([0f32; 32], [0f32; 32]);
        Mxfp4::dequantize_block(&a, &mut x);
        Mxfp4::dequantize_block(&b, &mut y);
        let want: f64 = x.iter().zip(&y).map(|(&p, &q)| p as f64 * q as f64).sum();
        prop_assert_eq!(mxfp4::block_dot(&a, &b), want);

        let (mut x, mut y) = ([0f32; 64], [0f32; 64]);
        Hif4::dequantize_block(&ua, &mut x);
        Hif4::dequantize_block(&ub, &mut y);
        let want: f64 = x.iter().zip(&y).map(|(&p, &q)| p as f64 * q as f64).sum();
        prop_assert_eq!(hif4::unit_dot(&ua, &ub), want);
    }

    /// The exact HiF8 dot is within the f64 summation bound of the plain f64
    /// dot of the widened values (every product is exact; only sums round).
    #[test]
    fn hif8_dot_is_exactly_rounded(a in prop::collection::vec(any::<u8>(), 1..300),
                                   seed in any::<u64>()) {
        let a: Vec<u8> = a.into_iter().filter(|&c| c != 0x80 && c & 0x7F != 0x6F).collect();
        let b: Vec<u8> = a.iter().enumerate().map(|(i, _)| {
            let c = (seed.rotate_left(i as u32 % 64) ^ i as u64) as u8;
            if c == 0x80 || c & 0x7F == 0x6F { 0 } else { c }
        }).collect();
        let prods: Vec<f64> = a.iter().zip(&b).map(|(&x, &y)| hif8::decode(x) as f64 * hif8::decode(y) as f64).collect();
        let naive: f64 = prods.iter().sum();
        let mag: f64 = prods.iter().map(|p| p.abs()).sum();
        let got = hif8::dot(&a, &b);
        prop_assert!((got - naive).abs() <= prods.len() as f64 * f64::EPSILON * mag, "{got} vs {naive}");
    }

    /// f16 and bf16 inputs quantize exactly as their f32 widening.
    #[test]
    fn half_inputs_equal_their_widening(x in block(128), f in 0usize..3) {
        let fmt = [Format::Mxfp4(Mxfp4Rounding::Rne), Format::Hif4(Hif4Variant::Amct),
                   Format::Hif8(Hif8Rounding::Hybrid)][f];
        let l = fmt.layout(&[2, 64], -1, false).unwrap();
        let h: Vec<half::f16> = x.iter().map(|&v| half::f16::from_f32(v)).collect();
        let b: Vec<half::bf16> = x.iter().map(|&v| half::bf16::from_f32(v)).collect();
        let hw: Vec<f32> = h.iter().map(|v| v.to_f32()).collect();
        let bw: Vec<f32> = b.iter().map(|v| v.to_f32()).collect();
        prop_assert_eq!(fmt.quantize(&h, &l).unwrap(), fmt.quantize(&hw, &l).unwrap());
        prop_assert_eq!(fmt.quantize(&b, &l).unwrap(), fmt.quantize(&bw, &l).unwrap());
    }
}

/// Every finite HiF8 value encodes back to its own code (ta and saturate).
#[test]
fn hif8_representable_values_round_trip() {
    for c in 0..=255u8 {
        let v = hif8::decode(c);
        if v.is_finite() {
            assert_eq!(hif8::encode(v, Hif8Rounding::Ta), c, "code {c:02X}");
            assert_eq!(hif8::encode(v, Hif8Rounding::Saturate), c, "code {c:02X}");
        }
    }
}

/// Bulk paths agree with block-by-block quantization.
#[test]
fn bulk_equals_blockwise() {
    let x: Vec<f32> = (0..4096)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
        .collect();
    let l = AxisLayout::new(&[64, 64], 1, 64);
    let bytes = Format::Hif4(Hif4Variant::Consortium)
        .quantize(&x, &l)
        .unwrap();
    for (r, unit) in bytes.chunks_exact(36).enumerate() {
        let want = Hif4::quantize_block(&x[r * 64..r * 64 + 64], Hif4Variant::Consortium);
        assert_eq!(unit, bytemuck::bytes_of(&want));
    }
}

/// The bulk scale search equals the block search, row by row, along any
/// axis; weighted, each block gets the importances of its own positions.
#[test]
fn bulk_scale_search_equals_blockwise() {
    use lpc_runtime::formats::search;
    let (k, n) = (96, 5);
    let w: Vec<f32> = (0..k * n)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 700.0)
        .collect();
    for f in [
        Format::Mxfp4(Mxfp4Rounding::Rne),
        Format::Hif4(Hif4Variant::Amct),
    ] {
        let l = f.layout(&[k, n], 0, true).unwrap();
        let imp: Vec<f32> = (0..k).map(|i| 1.0 + (i * 53 % 17) as f32).collect();
        for weighted in [None, Some(&imp[..])] {
            let bytes = f.quantize_search_weighted(&w, &l, weighted).unwrap();
            if weighted.is_none() {
                assert_eq!(bytes, f.quantize_search(&w, &l).unwrap());
            }
            let bb = f.block_bytes();
            for j in 0..n {
                let col: Vec<f32> = (0..k).map(|i| w[i * n + j]).collect();
                for (b, chunk) in col.chunks(f.block_len()).enumerate() {
                    let wb = weighted.map(|v| &v[b * f.block_len()..]);
                    let want: Vec<u8> = match f {
                        Format::Mxfp4(m) => {
                            bytemuck::bytes_of(&search::mxfp4_block_weighted(chunk, m, wb)).to_vec()
                        }
                        Format::Hif4(v) => {
                            bytemuck::bytes_of(&search::hif4_unit_weighted(chunk, v, wb)).to_vec()
                        }
                        Format::Hif8(_) => unreachable!(),
                    };
                    let at = (j * l.blocks_per_row() + b) * bb;
                    assert_eq!(&bytes[at..at + bb], &want[..], "{f} column {j} block {b}");
                }
            }
        }
        let short = f.quantize_search_weighted(&w, &l, Some(&imp[1..]));
        assert!(short.is_err(), "{f}: importances of the wrong length");
    }
}
