//! Single-op cases against onnxruntime (`tests/fixtures/ops/`, made by
//! `tools/gen_op_cases.py`): every op the interpreter claims, with the
//! attribute variants the ONNX and onnxruntime specs allow.

use lpc::npy;
use lpc::run::{run_model, value_from_npy};
use lpc_tests::fixture;

#[test]
fn every_op_case_matches_onnxruntime() {
    let root = fixture("ops");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 80, "expected the generated op cases");
    let mut failures = Vec::new();
    for d in &dirs {
        let case = d.file_name().unwrap().to_string_lossy().into_owned();
        let outs = match run_model(&d.join("model.onnx"), Some(&d.join("inputs")), &[], None) {
            Ok(o) => o,
            Err(e) => {
                failures.push(format!("{case}: {e}"));
                continue;
            }
        };
        for (name, got) in outs {
            let want =
                value_from_npy(&npy::read(&d.join("ref_ort").join(format!("{name}.npy"))).unwrap());
            if got.shape != want.shape || got.dtype != want.dtype {
                failures.push(format!(
                    "{case} {name}: {} {:?} vs onnxruntime {} {:?}",
                    got.dtype, got.shape, want.dtype, want.shape
                ));
                continue;
            }
            for (i, (a, b)) in got.to_f64().iter().zip(want.to_f64()).enumerate() {
                let ok = (a - b).abs() <= 1e-4 + 1e-4 * b.abs() || (a.is_nan() && b.is_nan());
                if !ok {
                    failures.push(format!("{case} {name}[{i}]: {a} vs onnxruntime {b}"));
                    break;
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
