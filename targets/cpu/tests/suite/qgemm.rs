//! The generated `lpc.qgemm` on random shapes (K not a multiple of the
//! block, M = 1, odd N, rotation, scaled HiF8, bias, residual, epilogue
//! activations; M >= 24 for the panel GEMMs: VNNI for 4-bit, bf16 pairs
//! (AVX-512 BF16) or f32 (haswell) for HiF8;
//! K a multiple of 128 and N of 16 for 4-bit weights in the CPU layout) against the
//! runtime's reference codecs and block dot products. Blocks must be identical (the activation codec is the
//! reference), so results agree to f64 summation order.

use lpc_ir::Dim;
use lpc_runtime::formats::{hif4, hif8, mxfp4, rowscale, AxisLayout};
use lpc_runtime::math::silu_f32 as silu;
use lpc_runtime::{hadamard, Format};
use lpc_target_cpu::bench::{qgemm_graph, OpLib, QgemmSpec};
use lpc_target_cpu::CpuTarget;

struct Rng(u64);
impl Rng {
    fn f(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

struct Case {
    f: Format,
    m: usize,
    k: usize,
    n: usize,
    rotate: usize,
    scaled: bool,
    bias: bool,
    residual: bool,
    act: Option<&'static str>,
    /// One scale level everywhere but one activation block (row 7) and
    /// one weight block (column 50): MXFP4 then pairs nearly every block
    /// pair, so the panel GEMM's unchecked tiles run beside checked ones.
    uniform: bool,
}

/// The reference: activation rows packed with the runtime's codec.
fn quant_rows(f: Format, x: &[f32], rows: usize, k: usize) -> Vec<u8> {
    let l = f.layout(&[rows, k], -1, true).unwrap();
    f.quantize(x, &l).unwrap()
}

fn run_case(c: &Case, seed: u64) {
    let mut rng = Rng(seed);
    let (m, k, n) = (c.m, c.k, c.n);
    // Blocks of 32 at different powers of two (x: 2^-4..2^4 in steps of 4,
    // w: block pairs 2^(0, 1), (3, 0), (2, 4), (5, 0), (1, 1), (2, 0)), so
    // that adjacent MXFP4 scales are sometimes within 2^3 of each other (the
    // panel GEMM pairs those blocks, shifting codes by 0 to 3 on either
    // side) and sometimes not.
    let x: Vec<f32> = (0..m * k)
        .map(|i| {
            let b = if !c.uniform {
                2f32.powi(((i / 32) % 5) as i32 * 2 - 4)
            } else if i / k == 7 && (i % k) / 32 == 1 {
                64.0
            } else {
                1.0
            };
            rng.f() * if i % 7 == 0 { 8.0 } else { 1.0 } * b
        })
        .collect();
    let w: Vec<f32> = (0..n * k)
        .map(|i| {
            let b = if !c.uniform {
                2f32.powi([0, 1, 3, 0, 2, 4, 5, 0, 1, 1, 2, 0][(i / 32) % 12])
            } else if i / k == 50 && i % k < 32 {
                64.0
            } else {
                1.0
            };
            rng.f() * 0.05 * b
        })
        .collect();
    let bias: Vec<f32> = (0..n).map(|_| rng.f()).collect();
    let res: Vec<f32> = (0..m * n).map(|_| rng.f()).collect();
    let spec = QgemmSpec {
        rotate: c.rotate,
        scaled: c.scaled,
        bias: c.bias.then(|| bias.clone()),
        residual: c.residual,
        activation: c.act.map(str::to_string),
    };
    let (g, wp, wexp) = qgemm_graph(c.f, Dim::Fixed(m), k, n, w, &spec);
    let bpr = wp.len() / n;

    // The kernel paths: the host's (AVX-512 VNNI and VBMI here: weights in
    // the CPU layout where the shape allows), AVX2 (haswell) and, for
    // 4-bit weights in the CPU layout, VNNI without VBMI (cascadelake,
    // when this CPU can run it), which keeps the formats' layout.
    let mut haswell = CpuTarget::host().unwrap();
    haswell.cpu = "haswell".into();
    haswell.features = String::new();
    let host = CpuTarget::host().unwrap();
    let host_vnni = host.features.contains("+avx512vnni") && host.features.contains("+avx512bw");
    let mut targets = vec![host, haswell];
    if host_vnni && !matches!(c.f, Format::Hif8(_)) && k % 128 == 0 && n % 16 == 0 {
        let mut cascadelake = CpuTarget::host().unwrap();
        cascadelake.cpu = "cascadelake".into();
        cascadelake.features = "+avx512bw,+avx512vnni".into();
        targets.push(cascadelake);
    }
    for target in targets {
        let cpu = target.cpu.clone();
        let got = run_lib(&g, target, &x, &res, c);
        check(c, &cpu, &got, &x, &res, &bias, &wp, &wexp, bpr);
    }
}

/// Compiles `g` for `target` and runs it on `x` (and the residual).
fn run_lib(g: &lpc_ir::Graph, target: CpuTarget, x: &[f32], res: &[f32], c: &Case) -> Vec<f32> {
    let (m, k, n) = (c.m, c.k, c.n);
    let dir = tempfile::tempdir().unwrap();
    // Every library of this process gets its own path (dlopen caches them).
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let name = format!(
        "q{}",
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let lib = OpLib::build(g, target, dir.path(), &name, 2).unwrap();
    let (xshape, rshape) = ([m, k], [m, n]);
    let mut ins: Vec<(&[f32], &[usize])> = vec![(x, &xshape[..])];
    if c.residual {
        ins.push((res, &rshape[..]));
    }
    lib.run(&ins).unwrap()
}

#[allow(clippy::too_many_arguments)]
fn check(
    c: &Case,
    cpu: &str,
    got: &[f32],
    x: &[f32],
    res: &[f32],
    bias: &[f32],
    wp: &[u8],
    wexp: &[i32],
    bpr: usize,
) {
    let (m, k, n) = (c.m, c.k, c.n);

    // The reference: activation rows rotated, scaled and quantized with the
    // runtime's codec, block dot products from the runtime.
    let mut xr = x.to_vec();
    if c.rotate > 0 {
        hadamard::rotate_rows(&mut xr, k, c.rotate);
    }
    let xl = AxisLayout::new(&[m, k], 1, c.f.block_len());
    let xexp = if c.scaled {
        rowscale::scale_rows(&mut xr, &xl)
    } else {
        vec![0; m]
    };
    let xp = quant_rows(c.f, &xr, m, k);
    let mut worst = 0f64;
    let mut scale = 0f64;
    for r in 0..m {
        for j in 0..n {
            let (a, b) = (&xp[r * bpr..][..bpr], &wp[j * bpr..][..bpr]);
            let mut d = match c.f {
                Format::Mxfp4(_) => mxfp4::dot(bytemuck::cast_slice(a), bytemuck::cast_slice(b)),
                Format::Hif4(_) => hif4::dot(bytemuck::cast_slice(a), bytemuck::cast_slice(b)),
                Format::Hif8(_) => hif8::dot(a, b),
            };
            d *= 2f64.powi(-(xexp[r] + wexp[j]));
            if c.bias {
                d += bias[j] as f64;
            }
            let mut y = d as f32;
            y = match c.act {
                Some("silu") => silu(y),
                _ => y,
            };
            if c.residual {
                y += res[r * n + j];
            }
            let gv = got[r * n + j];
            worst = worst.max((gv - y).abs() as f64);
            scale = scale.max(y.abs() as f64);
        }
    }
    assert!(
        worst <= 1e-5 * scale.max(1e-6),
        "{} on {cpu}: m={m} k={k} n={n} rot={} scaled={}: max diff {worst:e} (scale {scale:e})",
        c.f.name(),
        c.rotate,
        c.scaled
    );
}

#[test]
fn qgemm_matches_the_reference_block_dot_products() {
    let formats = [
        Format::parse("mxfp4", None, None).unwrap(),
        Format::parse("hif4", None, None).unwrap(),
        Format::parse("hif8", None, None).unwrap(),
    ];
    let mut seed = 1;
    for f in formats {
        for &(m, k, n) in &[
            (1, 64, 5),
            (3, 40, 17),
            (7, 100, 1),
            (2, 160, 9),
            (1, 33, 3),
            (70, 96, 5),
            // K a multiple of 128 and N of 16: 4-bit weights in the CPU
            // layout (strips: below 64 rows for MXFP4 and 16 for HiF4 the
            // strip kernel, in passes of 4 rows and one of the rows left
            // over, more the panel GEMM, the last panel partial); N = 9:
            // the formats'.
            (1, 256, 9),
            (1, 256, 32),
            (2, 256, 32),
            (3, 384, 16),
            (6, 384, 80),
            (15, 256, 32),
            (41, 256, 48),
            // The panel GEMMs on the CPU layout (HiF8: bf16 pairs with
            // AVX-512 BF16), a partial row tile and a partial panel.
            (29, 256, 48),
            // Enough work per strip for the library's two threads to split
            // the strips (`lpc_rt_parallel_for`'s cost estimate).
            (1, 2048, 160),
        ] {
            for (bias, residual, act) in [(false, false, None), (true, true, Some("silu"))] {
                seed += 1;
                run_case(
                    &Case {
                        f,
                        m,
                        k,
                        n,
                        rotate: 0,
                        scaled: false,
                        bias,
                        residual,
                        act,
                        uniform: false,
                    },
                    seed,
                );
            }
        }
        // 4 MB of weights: on AMD Zen a single 4-bit row pauses once per
        // group in the strip kernel (`PACE_MIN_BYTES`); with
        // AVX-512 BF16, HiF8 rows below 16 (here 9: four pairs and one)
        // take the row kernel, not the panels (`HIF8_ROWS_MIN_BYTES`).
        let (m, k, residual) = match f {
            Format::Mxfp4(_) | Format::Hif4(_) => (1, 8192, false),
            Format::Hif8(_) => (9, 1024, true),
        };
        seed += 1;
        run_case(
            &Case {
                f,
                m,
                k,
                n: 1024,
                rotate: 0,
                scaled: false,
                bias: true,
                residual,
                act: None,
                uniform: false,
            },
            seed,
        );
        // Rotation (K a multiple of the block) and, for HiF8, scaled rows.
        let scaled = matches!(f, Format::Hif8(_));
        for &(m, k, n) in &[(1, 128, 7), (2, 128, 48), (4, 64, 3)] {
            seed += 1;
            run_case(
                &Case {
                    f,
                    m,
                    k,
                    n,
                    rotate: 32,
                    scaled,
                    bias: true,
                    residual: false,
                    act: None,
                    uniform: false,
                },
                seed,
            );
        }
        // The panel GEMMs (4 rows and more; HiF8: 8): several panels and a
        // partial one, row tiles and tails of 4/2/1 rows, K tails, rotation, scaled
        // HiF8, the whole epilogue.
        // K = 1152: a longer panel (the CPU layout for 4-bit and HiF8);
        // K = 8256: two K slices of the HiF8 f32 panel, the last partial.
        for &(m, k, n, rotate) in &[
            (30, 200, 53, 0),
            (29, 320, 20, 0),
            (25, 128, 100, 64),
            (26, 1152, 64, 0),
            (24, 8256, 40, 0),
            // MXFP4 pairs blocks from 64 rows on: pairs and an odd block,
            // both layouts.
            (70, 200, 53, 0),
            (68, 1152, 80, 0),
        ] {
            seed += 1;
            run_case(
                &Case {
                    f,
                    m,
                    k,
                    n,
                    rotate,
                    scaled,
                    bias: true,
                    residual: true,
                    act: Some("silu"),
                    uniform: false,
                },
                seed,
            );
        }
        // Nearly every pair pairs: tiles and panels that pair all their
        // block pairs (run unchecked) beside a tile and a panel that do not.
        for &(m, k, n) in &[(70, 224, 100), (67, 1152, 64)] {
            seed += 1;
            run_case(
                &Case {
                    f,
                    m,
                    k,
                    n,
                    rotate: 0,
                    scaled,
                    bias: true,
                    residual: false,
                    act: None,
                    uniform: true,
                },
                seed,
            );
        }
    }
}
