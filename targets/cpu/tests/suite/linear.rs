//! The generated f32 `lpc.linear` (W `[k, n]`) against an f64 reference, on
//! shapes that reach every part of it: 4-row tiles and the rows they leave,
//! full 64-column panels and a partial one (masked lanes), K in several
//! slices with a partial last one, two threads splitting the panels; for the
//! host (AVX-512) and for AVX2 (haswell). The same for the bf16 linear
//! (`lpc.linear {bf16 = 1}`): `vdpbf16ps` on the host (AVX-512 BF16), f32
//! multiply-adds of the widened pairs on haswell.

use lpc_ir::{Attr, DType, Dim, Graph, NewNode, Tensor, Type};
use lpc_target_cpu::bench::{linear_graph, OpLib};
use lpc_target_cpu::CpuTarget;
use std::collections::BTreeMap;

/// Shapes `(m, k, n)` that reach every part of the GEMM.
const SHAPES: [(usize, usize, usize); 7] = [
    (6, 200, 100),
    (5, 130, 16),
    (9, 64, 129),
    (1, 300, 70),
    (4, 8, 64),
    // Partial panels of 2 and 4 vectors (1 and 3 above).
    (7, 96, 32),
    (2, 40, 125),
];

fn targets() -> [CpuTarget; 2] {
    let mut haswell = CpuTarget::host().unwrap();
    haswell.cpu = "haswell".into();
    haswell.features = String::new();
    [CpuTarget::host().unwrap(), haswell]
}

/// `v` rounded to bf16 (to nearest even; finite values).
fn bf16(v: f32) -> f32 {
    let u = v.to_bits();
    f32::from_bits(((u + 0x7fff + ((u >> 16) & 1)) >> 16) << 16)
}

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Builds `g` for the host and for haswell, runs it on `x` (`m × k`) and
/// checks each output against the f64 sum of `op(x) · op(W)` (`w` as
/// `[k, n]`), within 1e-6 of the terms' magnitude.
fn check_f64_sums(
    g: &Graph,
    tag: &str,
    (m, k, n): (usize, usize, usize),
    x: &[f32],
    w: &[f32],
    op: fn(f32) -> f32,
) {
    for target in targets() {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("{tag}_{m}_{k}_{n}_{}", target.cpu);
        let lib = OpLib::build(g, target, dir.path(), &name, 2).unwrap();
        let got = lib.run(&[(x, &[m, k][..])]).unwrap();
        assert_eq!(got.len(), m * n);
        for r in 0..m {
            for j in 0..n {
                let (mut want, mut mag) = (0f64, 0f64);
                for t in 0..k {
                    let p = op(x[r * k + t]) as f64 * op(w[t * n + j]) as f64;
                    want += p;
                    mag += p.abs();
                }
                let d = (got[r * n + j] as f64 - want).abs();
                assert!(
                    d <= 1e-6 * mag.max(1e-30) + 1e-30,
                    "{name}: y[{r}, {j}] = {} against {want} (|terms| {mag})",
                    got[r * n + j]
                );
            }
        }
    }
}

#[test]
fn linear_matches_f64_sums_on_partial_panels_tiles_and_k_slices() {
    for (m, k, n) in SHAPES {
        let x = values(m * k, (m * k + n) as u64);
        let w = values(k * n, (k * n + m) as u64);
        let g = linear_graph(Dim::Fixed(m), k, n, &w);
        check_f64_sums(&g, "lin", (m, k, n), &x, &w, |v| v);
    }
}

/// `x · W` with `W` (`[k, n]`) as the bf16 pairs of `bf16-linear`.
fn bf16_linear_graph(m: usize, k: usize, n: usize, w: &[f32]) -> Graph {
    let mut g = Graph::new("linear_bf16");
    let xi = g.add_input(
        "x",
        Some(Type::new(DType::F32, vec![Dim::Fixed(m), Dim::Fixed(k)])),
    );
    let kp = k.div_ceil(2);
    let mut data = Vec::with_capacity(kp * n * 4);
    for t in 0..kp {
        for j in 0..n {
            for kk in [2 * t, 2 * t + 1] {
                let v = if kk < k { bf16(w[kk * n + j]) } else { 0.0 };
                data.extend_from_slice(&((v.to_bits() >> 16) as u16).to_le_bytes());
            }
        }
    }
    let t = Tensor::new(DType::Bf16, vec![kp, n, 2], data.into()).unwrap();
    let wc = g.add_const("w", t);
    let mut attrs = BTreeMap::new();
    attrs.insert("bf16".to_string(), Attr::Int(1));
    let (_, outs) = g.add_node(
        NewNode {
            name: "l".into(),
            op: "lpc.linear".into(),
            attrs,
            inputs: vec![Some(xi), Some(wc)],
        },
        vec![(
            "y".into(),
            Some(Type::new(DType::F32, vec![Dim::Fixed(m), Dim::Fixed(n)])),
        )],
    );
    g.outputs = outs;
    g
}

#[test]
fn bf16_linear_matches_f64_sums_of_the_rounded_operands() {
    // Odd K too: the last pair's odd half is zero.
    let shapes = SHAPES.iter().copied().chain([(3, 37, 50), (5, 1, 20)]);
    for (m, k, n) in shapes {
        let x = values(m * k, (m * k + n) as u64 + 7);
        let w = values(k * n, (k * n + m) as u64 + 7);
        let g = bf16_linear_graph(m, k, n, &w);
        check_f64_sums(&g, "linbf16", (m, k, n), &x, &w, bf16);
    }
}
