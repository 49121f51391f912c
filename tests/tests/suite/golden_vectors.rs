//! Every golden vector of `tests/fixtures/formats/` (copied from
//! `shared/formats/vectors`), bit for bit, every format, mode and variant.

use lpc_runtime::formats::{
    hif4, hif8, mxfp4, BlockFormat, Hif4, Hif4Unit, Hif4Variant, Hif8Rounding, Mxfp4, Mxfp4Block,
    Mxfp4Rounding,
};
use lpc_tests::{canon_bits, hex_bytes, hex_u32s, Csv};

fn f32s(hex: &str) -> Vec<f32> {
    hex_u32s(hex).into_iter().map(f32::from_bits).collect()
}

fn canon(v: &[f32]) -> Vec<u32> {
    v.iter().map(|&x| canon_bits(x)).collect()
}

fn u8hex(s: &str) -> u8 {
    u8::from_str_radix(s, 16).expect("hex code")
}

#[test]
fn hif8_decode_table() {
    let csv = Csv::load("hif8_decode.csv");
    assert_eq!(csv.rows.len(), 256);
    let (c, f32c, f16c, bf16c) = (
        csv.col("code"),
        csv.col("f32_bits"),
        csv.col("f16_bits"),
        csv.col("bf16_bits"),
    );
    for r in &csv.rows {
        let code = u8hex(&r[c]);
        let v = hif8::decode(code);
        assert_eq!(
            canon_bits(v),
            u32::from_str_radix(&r[f32c], 16).unwrap(),
            "code {code:02X}"
        );
        // The widening tables: every finite value is exact in f16 and bf16.
        let h = half::f16::from_f32(v);
        let b = half::bf16::from_f32(v);
        let (hb, bb) = if v.is_nan() {
            (0x7E00, 0x7FC0)
        } else {
            (h.to_bits(), b.to_bits())
        };
        assert_eq!(
            hb,
            u16::from_str_radix(&r[f16c], 16).unwrap(),
            "f16 of {code:02X}"
        );
        assert_eq!(
            bb,
            u16::from_str_radix(&r[bf16c], 16).unwrap(),
            "bf16 of {code:02X}"
        );
        if !v.is_nan() {
            assert_eq!(h.to_f32(), v, "f16 widening of {code:02X} is exact");
            assert_eq!(b.to_f32(), v, "bf16 widening of {code:02X} is exact");
        }
    }
}

fn check_hif8_encode(file: &str) -> usize {
    let csv = Csv::load(file);
    let x = csv.col("f32_bits");
    let modes = [
        (csv.col("ta"), Hif8Rounding::Ta),
        (csv.col("saturate"), Hif8Rounding::Saturate),
        (csv.col("hybrid"), Hif8Rounding::Hybrid),
    ];
    let mut bad = Vec::new();
    for r in &csv.rows {
        let v = f32::from_bits(u32::from_str_radix(&r[x], 16).unwrap());
        for (col, mode) in modes {
            let got = hif8::encode(v, mode);
            if got != u8hex(&r[col]) {
                bad.push(format!("{} {mode:?}: got {got:02X}, want {}", r[x], r[col]));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{file}: {} mismatches, first: {:?}",
        bad.len(),
        &bad[..bad.len().min(10)]
    );
    csv.rows.len()
}

#[test]
fn hif8_encode_all_modes() {
    assert_eq!(check_hif8_encode("hif8_encode.csv"), 4560);
}

#[test]
fn hif8_encode_every_bf16_pattern() {
    assert_eq!(check_hif8_encode("hif8_encode_bf16_all.csv"), 65536);
}

#[test]
fn e2m1_decode_table() {
    let csv = Csv::load("e2m1_decode.csv");
    assert_eq!(csv.rows.len(), 16);
    let (c, x2, f) = (csv.col("code"), csv.col("value_x2"), csv.col("f32_bits"));
    for r in &csv.rows {
        let code = u8hex(&r[c]) as usize;
        assert_eq!(
            mxfp4::E2M1_VALUES[code].to_bits(),
            u32::from_str_radix(&r[f], 16).unwrap()
        );
        assert_eq!(mxfp4::E2M1_X2[code] as i32, r[x2].parse::<i32>().unwrap());
    }
}

#[test]
fn e2m1_encode_both_modes() {
    let csv = Csv::load("e2m1_encode.csv");
    assert_eq!(csv.rows.len(), 1321);
    let (x, rne, away) = (csv.col("f32_bits"), csv.col("rne"), csv.col("ties_away"));
    for r in &csv.rows {
        let v = f32::from_bits(u32::from_str_radix(&r[x], 16).unwrap());
        assert_eq!(
            mxfp4::encode_e2m1(v, Mxfp4Rounding::Rne),
            u8hex(&r[rne]),
            "rne {}",
            r[x]
        );
        assert_eq!(
            mxfp4::encode_e2m1(v, Mxfp4Rounding::TiesAway),
            u8hex(&r[away]),
            "ties_away {}",
            r[x]
        );
    }
}

#[test]
fn e8m0_decode_table() {
    let csv = Csv::load("e8m0_decode.csv");
    assert_eq!(csv.rows.len(), 256);
    let (c, f) = (csv.col("code"), csv.col("f32_bits"));
    for r in &csv.rows {
        let v = mxfp4::e8m0_to_f32(u8hex(&r[c]));
        assert_eq!(
            canon_bits(v),
            u32::from_str_radix(&r[f], 16).unwrap(),
            "scale {}",
            r[c]
        );
    }
}

#[test]
fn mxfp4_blocks_both_modes() {
    let csv = Csv::load("mxfp4_blocks.csv");
    assert_eq!(csv.rows.len(), 225);
    let (name, x, scale) = (csv.col("name"), csv.col("x"), csv.col("scale"));
    let modes = [
        (Mxfp4Rounding::Rne, csv.col("data_rne"), csv.col("deq_rne")),
        (
            Mxfp4Rounding::TiesAway,
            csv.col("data_ties_away"),
            csv.col("deq_ties_away"),
        ),
    ];
    for r in &csv.rows {
        let input = f32s(&r[x]);
        assert_eq!(input.len(), 32);
        for (mode, data, deq) in modes {
            let b = Mxfp4::quantize_block(&input, mode);
            assert_eq!(b.scale, u8hex(&r[scale]), "{} {mode:?} scale", r[name]);
            assert_eq!(
                b.data.to_vec(),
                hex_bytes(&r[data]),
                "{} {mode:?} data",
                r[name]
            );
            // The decoder, fed the vector's bytes.
            let mut bytes = [0u8; 17];
            bytes[0] = u8hex(&r[scale]);
            bytes[1..].copy_from_slice(&hex_bytes(&r[data]));
            let blk: Mxfp4Block = bytemuck::cast(bytes);
            let mut out = [0f32; 32];
            Mxfp4::dequantize_block(&blk, &mut out);
            assert_eq!(canon(&out), hex_u32s(&r[deq]), "{} {mode:?} deq", r[name]);
        }
    }
}

#[test]
fn hif4_tables() {
    let csv = Csv::load("hif4_e6m2.csv");
    assert_eq!(csv.rows.len(), 256);
    let (c, f) = (csv.col("code"), csv.col("f32_bits"));
    for r in &csv.rows {
        let v = hif4::e6m2_to_f32(u8hex(&r[c]));
        assert_eq!(
            canon_bits(v),
            u32::from_str_radix(&r[f], 16).unwrap(),
            "e6m2 {}",
            r[c]
        );
    }
    let csv = Csv::load("hif4_elements.csv");
    assert_eq!(csv.rows.len(), 16);
    let (n, x4, f) = (csv.col("nibble"), csv.col("value_x4"), csv.col("f32_bits"));
    for r in &csv.rows {
        let nib = u8hex(&r[n]) as usize;
        assert_eq!(
            hif4::S1P2_VALUES[nib].to_bits(),
            u32::from_str_radix(&r[f], 16).unwrap()
        );
        assert_eq!(
            (hif4::S1P2_VALUES[nib] * 4.0) as i32,
            r[x4].parse::<i32>().unwrap()
        );
    }
}

#[test]
fn hif4_units_both_variants() {
    let csv = Csv::load("hif4_units.csv");
    assert_eq!(csv.rows.len(), 318);
    let (name, x) = (csv.col("name"), csv.col("x"));
    let variants = [
        (
            Hif4Variant::Consortium,
            csv.col("meta_consortium"),
            csv.col("data_consortium"),
            csv.col("deq_consortium"),
        ),
        (
            Hif4Variant::Amct,
            csv.col("meta_amct"),
            csv.col("data_amct"),
            csv.col("deq_amct"),
        ),
    ];
    let (mut units_differ, mut elements_differ) = (0, 0);
    for r in &csv.rows {
        let input = f32s(&r[x]);
        assert_eq!(input.len(), 64);
        let units: Vec<Hif4Unit> = variants
            .iter()
            .map(|&(v, meta, data, deq)| {
                let u = Hif4::quantize_block(&input, v);
                assert_eq!(
                    u.meta.to_vec(),
                    hex_bytes(&r[meta]),
                    "{} {v:?} meta",
                    r[name]
                );
                assert_eq!(
                    u.data.to_vec(),
                    hex_bytes(&r[data]),
                    "{} {v:?} data",
                    r[name]
                );
                let mut bytes = [0u8; 36];
                bytes[..4].copy_from_slice(&hex_bytes(&r[meta]));
                bytes[4..].copy_from_slice(&hex_bytes(&r[data]));
                let unit: Hif4Unit = bytemuck::cast(bytes);
                let mut out = [0f32; 64];
                Hif4::dequantize_block(&unit, &mut out);
                assert_eq!(canon(&out), hex_u32s(&r[deq]), "{} {v:?} deq", r[name]);
                u
            })
            .collect();
        let deq = units.iter().map(|u| {
            let mut out = [0f32; 64];
            Hif4::dequantize_block(u, &mut out);
            canon(&out)
        });
        let deq: Vec<Vec<u32>> = deq.collect();
        let n = deq[0].iter().zip(&deq[1]).filter(|(a, b)| a != b).count();
        elements_differ += n;
        units_differ += (n > 0) as usize;
    }
    // SPEC §3.4: the variants' values differ in 407 elements of 65 units.
    assert_eq!((units_differ, elements_differ), (65, 407));
}

/// The integer dot-product identities (SPEC §2.6, §3.6) on every pair of
/// consecutive vector blocks equal the f64 dot of the dequantized values.
#[test]
fn block_dots_on_vector_blocks_equal_dequantized_f64_dots() {
    let csv = Csv::load("mxfp4_blocks.csv");
    let blocks: Vec<Mxfp4Block> = csv
        .rows
        .iter()
        .map(|r| Mxfp4::quantize_block(&f32s(&r[csv.col("x")]), Mxfp4Rounding::Rne))
        .collect();
    for w in blocks.windows(2) {
        let (mut a, mut b) = ([0f32; 32], [0f32; 32]);
        Mxfp4::dequantize_block(&w[0], &mut a);
        Mxfp4::dequantize_block(&w[1], &mut b);
        let want: f64 = a.iter().zip(&b).map(|(&p, &q)| p as f64 * q as f64).sum();
        let got = mxfp4::block_dot(&w[0], &w[1]);
        assert!(
            got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
            "{got} vs {want}"
        );
    }
    let csv = Csv::load("hif4_units.csv");
    let units: Vec<Hif4Unit> = csv
        .rows
        .iter()
        .map(|r| Hif4::quantize_block(&f32s(&r[csv.col("x")]), Hif4Variant::Consortium))
        .collect();
    for w in units.windows(2) {
        let (mut a, mut b) = ([0f32; 64], [0f32; 64]);
        Hif4::dequantize_block(&w[0], &mut a);
        Hif4::dequantize_block(&w[1], &mut b);
        let want: f64 = a.iter().zip(&b).map(|(&p, &q)| p as f64 * q as f64).sum();
        let got = hif4::unit_dot(&w[0], &w[1]);
        assert!(
            got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
            "{got} vs {want}"
        );
    }
}
