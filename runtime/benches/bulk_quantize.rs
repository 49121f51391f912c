//! Bulk quantize/dequantize throughput per format, 1 and 2 threads.
//!
//! Reports GB/s of f32 input, and the ratio to a plain f32 pass over the same
//! tensor run in the same process (a parallel copy `y = x`, which reads and
//! writes as many bytes as quantize reads), so the numbers survive the host's
//! load. Run: `cargo bench -p lpc-runtime --bench bulk_quantize`.
//! `LPC_BENCH_MB` sets the tensor size in MB of f32 (default 256);
//! `LPC_BENCH_FORMATS=hif4,mxfp4` keeps only those formats.

use lpc_runtime::formats::{Format, Hif4Variant, Hif8Rounding, Mxfp4Rounding};
use rayon::prelude::*;
use std::time::Instant;

fn best_of<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let mb: usize = std::env::var("LPC_BENCH_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    let k = 4096;
    let rows = (mb << 20) / 4 / k;
    let n = rows * k;
    // Deterministic pseudo-Gaussian data (sum of uniforms), weight-like scale.
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let x: Vec<f32> = (0..n)
        .map(|_| {
            let mut acc = 0f32;
            for _ in 0..4 {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                acc += (s >> 40) as f32 / (1u64 << 24) as f32;
            }
            (acc - 2.0) * 0.02
        })
        .collect();
    let gb = (n * 4) as f64 / 1e9;
    let only = std::env::var("LPC_BENCH_FORMATS").unwrap_or_default();
    let formats: Vec<Format> = [
        Format::Mxfp4(Mxfp4Rounding::Rne),
        Format::Hif4(Hif4Variant::Consortium),
        Format::Hif4(Hif4Variant::Amct),
        Format::Hif8(Hif8Rounding::Ta),
    ]
    .into_iter()
    .filter(|f| only.is_empty() || only.split(',').any(|o| o == f.name()))
    .collect();
    println!(
        "tensor [{rows}, {k}] f32 = {:.0} MB, blocks along the last axis",
        gb * 1e3
    );
    println!(
        "{:<22} {:>7} {:>10} {:>10} {:>12} {:>12}",
        "format", "threads", "q GB/s", "dq GB/s", "q / copy", "copy GB/s"
    );
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("thread pool");
        pool.install(|| {
            let mut y = vec![0f32; n];
            let t_copy = best_of(3, || {
                y.par_chunks_mut(1 << 16)
                    .zip(x.par_chunks(1 << 16))
                    .for_each(|(d, s)| d.copy_from_slice(s))
            });
            for &f in &formats {
                let l = f.layout(&[rows, k], -1, false).expect("layout");
                let mut packed = Vec::new();
                let t_q = best_of(3, || packed = f.quantize(&x, &l).expect("quantize"));
                let t_dq = best_of(3, || {
                    std::hint::black_box(f.dequantize(&packed, &l).expect("dequantize"));
                });
                println!(
                    "{:<22} {:>7} {:>10.2} {:>10.2} {:>12.3} {:>12.2}",
                    f.to_string(),
                    threads,
                    gb / t_q,
                    gb / t_dq,
                    t_copy / t_q,
                    gb / t_copy
                );
            }
        });
    }
}
