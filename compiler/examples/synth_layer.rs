//! Writes a synthetic Qwen3-shaped layer (see `lpc::synth`) for benchmarks:
//!
//!   cargo run --release -p lpc --example synth_layer -- DIR NAME f16|bf16|f32 [32b|small]
//!
//! `DIR/NAME.onnx` and its external data `DIR/NAME.onnx.data`.

use lpc::synth::{write_layer, LayerDims};
use lpc_ir::DType;

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() < 3 {
        eprintln!("usage: synth_layer DIR NAME f16|bf16|f32 [32b|small]");
        std::process::exit(2);
    }
    let dt = match a[2].as_str() {
        "f16" => DType::F16,
        "bf16" => DType::Bf16,
        "f32" => DType::F32,
        t => {
            eprintln!("unknown type {t}");
            std::process::exit(2);
        }
    };
    let dims = match a.get(3).map_or("32b", |s| s.as_str()) {
        "small" => LayerDims {
            hidden: 1024,
            heads: 16,
            kv_heads: 8,
            head_dim: 64,
            intermediate: 3072,
        },
        _ => LayerDims::QWEN3_32B,
    };
    let dir = std::path::Path::new(&a[0]);
    std::fs::create_dir_all(dir).expect("output directory");
    let t = std::time::Instant::now();
    match write_layer(dir, &a[1], &dims, dt, 0x5eed) {
        Ok(p) => println!(
            "wrote {} ({:.2} G weights, {:.1} s)",
            p.display(),
            dims.params() as f64 / 1e9,
            t.elapsed().as_secs_f64()
        ),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
