//! Activation quantization to integer block codes (`formats::codes`, what
//! every generated `qgemm` runs on its input rows first), warm in cache, on
//! the row shapes of the fixtures and of Qwen3-32B: ns per element, and the
//! ratio to a plain f32 copy of the same rows timed in the same process.
//! Run: `cargo bench -p lpc-runtime --bench quantize_codes`.

use lpc_runtime::formats::codes::quantize_codes;
use lpc_runtime::formats::{Format, Hif4Variant, Mxfp4Rounding};
use std::hint::black_box;
use std::time::Instant;

/// The median of 15 timings of `reps` calls, in ns per call.
fn median_ns<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    let mut t: Vec<f64> = (0..15)
        .map(|_| {
            let s = Instant::now();
            for _ in 0..reps {
                f();
            }
            s.elapsed().as_secs_f64() * 1e9 / reps as f64
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[7]
}

fn main() {
    let formats = [
        Format::Mxfp4(Mxfp4Rounding::Rne),
        Format::Hif4(Hif4Variant::Consortium),
    ];
    println!(
        "{:<12} {:>5} {:>6} {:>6} {:>10} {:>10} {:>9}",
        "format", "rows", "k", "rotate", "ns/elem", "copy ns/e", "q / copy"
    );
    for (rows, k) in [
        (32, 64),
        (12, 128),
        (12, 384),
        (16, 5120),
        (512, 5120),
        (1, 25600),
    ] {
        let mut s = 0x9E37_79B9_7F4A_7C15u64 ^ k as u64;
        let x: Vec<f32> = (0..rows * k)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
            })
            .collect();
        let reps = (1 << 22) / (rows * k) + 1;
        let mut y = vec![0f32; x.len()];
        let copy = median_ns(reps, || {
            y.copy_from_slice(black_box(&x));
            black_box(&mut y);
        });
        for f in formats {
            for rotate in [0, 32] {
                let bl = f.block_len();
                let nb = k.div_ceil(bl);
                let stride = nb * bl;
                let mut codes = vec![0i8; rows * stride];
                let mut factors = vec![0f64; rows * nb];
                let t = median_ns(reps, || {
                    quantize_codes(
                        f,
                        black_box(&x),
                        k,
                        rotate,
                        &mut codes,
                        stride,
                        &mut factors,
                    )
                    .expect("quantize_codes");
                    black_box(&mut codes);
                });
                let n = (rows * k) as f64;
                println!(
                    "{:<12} {:>5} {:>6} {:>6} {:>10.3} {:>10.3} {:>9.2}",
                    f.name(),
                    rows,
                    k,
                    rotate,
                    t / n,
                    copy / n,
                    t / copy
                );
            }
        }
    }
}
