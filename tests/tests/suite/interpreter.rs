//! Every fixture model runs in the reference interpreter, as imported and
//! after canonicalization, and matches onnxruntime's outputs (`ref_ort/`)
//! within 1e-4 absolute + 1e-4 relative.

use lpc::npy;
use lpc::onnx::{import, OnnxModel};
use lpc::run::read_inputs;
use lpc_ir::interp;
use lpc_passes::{canonicalize, PassManager, RunOptions};
use lpc_tests::fixture;

fn check(model: &str, inputs: &str, refs: &str) {
    for canonical in [false, true] {
        check_one(model, inputs, refs, canonical);
    }
}

fn check_one(model: &str, inputs: &str, refs: &str, canonical: bool) {
    let dir = fixture(&format!("models/{model}"));
    let mut g = import(&OnnxModel::load(&dir.join("model.onnx")).unwrap()).unwrap();
    if canonical {
        let pm = PassManager::new(
            canonicalize(),
            RunOptions {
                verify: true,
                ..Default::default()
            },
        );
        pm.run(&mut g).unwrap_or_else(|e| panic!("{model}: {e}"));
    }
    let ins = read_inputs(&g, Some(&dir.join(inputs)), &[]).unwrap();
    let t = std::time::Instant::now();
    let outs =
        interp::run(&g, &ins).unwrap_or_else(|e| panic!("{model} (canonical: {canonical}): {e}"));
    let elapsed = t.elapsed();
    let mut compared = 0;
    for (&o, got) in g.outputs.iter().zip(outs) {
        let name = g.value(o).name.clone();
        let path = dir.join(refs).join(format!("{name}.npy"));
        // Some references hold the logits only.
        if !path.exists() && name != "logits" && name != "sample" {
            continue;
        }
        compared += 1;
        let want = npy::read(&path).unwrap();
        assert_eq!(got.shape, want.shape, "{model} {name}: shape");
        let w: Vec<f32> = want
            .data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let g = got
            .as_f32()
            .unwrap_or_else(|| panic!("{model} {name}: not float"));
        let mut worst = 0f32;
        for (i, (&a, &b)) in g.iter().zip(&w).enumerate() {
            let err = (a - b).abs();
            assert!(
                err <= 1e-4 + 1e-4 * b.abs(),
                "{model} {name}[{i}] (canonical: {canonical}): {a} vs onnxruntime {b}"
            );
            worst = worst.max(err);
        }
        eprintln!(
            "{model} {name} (canonical: {canonical}): max abs diff {worst:.2e} ({elapsed:.2?})"
        );
    }
    assert!(compared > 0, "{model}: nothing compared");
}

#[test]
fn qwen3_prefill_torchscript() {
    check("qwen3_small_prefill_ts", "inputs", "ref_ort");
}

#[test]
fn qwen3_decode_torchscript() {
    check("qwen3_small_decode_ts", "inputs", "ref_ort");
}

#[test]
fn qwen3_prefill_opset23() {
    check("qwen3_small_prefill_op23", "inputs", "ref_ort");
}

#[test]
fn qwen3_genai_prefill() {
    check("qwen3_small_genai_fp32", "inputs", "ref_ort");
}

#[test]
fn qwen3_genai_decode_step() {
    check("qwen3_small_genai_fp32", "decode_inputs", "decode_ref_ort");
}

#[test]
fn wan_torchscript() {
    check("wan_small_ts", "inputs", "ref_ort");
}

#[test]
fn wan_opset23() {
    check("wan_small_op23", "inputs", "ref_ort");
}
