//! The generated f32 `lpc.linear` (W `[k, n]`) against an f64 reference, on
//! shapes that reach every part of it: 4-row tiles and the rows they leave,
//! full 64-column panels and a partial one (masked lanes), K in several
//! slices with a partial last one, two threads splitting the panels; for the
//! host (AVX-512) and for AVX2 (haswell).

use lpc_ir::Dim;
use lpc_target_cpu::bench::{linear_graph, OpLib};
use lpc_target_cpu::CpuTarget;

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

#[test]
fn linear_matches_f64_sums_on_partial_panels_tiles_and_k_slices() {
    let mut haswell = CpuTarget::host().unwrap();
    haswell.cpu = "haswell".into();
    haswell.features = String::new();
    for (m, k, n) in [
        (6, 200, 100),
        (5, 130, 16),
        (9, 64, 129),
        (1, 300, 70),
        (4, 8, 64),
        // Partial panels of 2 and 4 vectors (1 and 3 above).
        (7, 96, 32),
        (2, 40, 125),
    ] {
        let x = values(m * k, (m * k + n) as u64);
        let w = values(k * n, (k * n + m) as u64);
        let g = linear_graph(Dim::Fixed(m), k, n, &w);
        for target in [CpuTarget::host().unwrap(), haswell.clone()] {
            let dir = tempfile::tempdir().unwrap();
            let name = format!("lin_{m}_{k}_{n}_{}", target.cpu);
            let lib = OpLib::build(&g, target, dir.path(), &name, 2).unwrap();
            let got = lib.run(&[(&x, &[m, k][..])]).unwrap();
            assert_eq!(got.len(), m * n);
            for r in 0..m {
                for j in 0..n {
                    let (mut want, mut mag) = (0f64, 0f64);
                    for t in 0..k {
                        let p = x[r * k + t] as f64 * w[t * n + j] as f64;
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
}
