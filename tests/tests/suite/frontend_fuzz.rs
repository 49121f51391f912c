//! Mutated fixture bytes never panic the frontend: decoding, importing,
//! verifying and printing either succeed or return an error. A bounded,
//! deterministic number of cases per run.

use lpc::onnx::{import, OnnxModel};
use lpc_ir::{text, verify::verify};
use lpc_tests::fixture;
use proptest::prelude::*;

fn load_mutated(bytes: &[u8], edits: &[(usize, u8)], cut: Option<usize>) {
    let mut b = bytes.to_vec();
    for &(pos, val) in edits {
        let i = pos % b.len();
        b[i] = val;
    }
    if let Some(c) = cut {
        b.truncate(c % (b.len() + 1));
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.onnx");
    std::fs::write(&p, &b).unwrap();
    if let Ok(m) = OnnxModel::load(&p) {
        if let Ok(g) = import(&m) {
            if verify(&g).is_ok() {
                let _ = text::print(&g);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_models_do_not_panic(
        which in 0usize..3,
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in prop::option::of(any::<usize>()),
    ) {
        // Small graphs with the widest variety of nodes; the head of each file
        // (graph structure) is where mutations matter most, so aim edits there.
        let m = ["wan_small_ts", "qwen3_small_genai_fp32", "wan_small_op23"][which];
        let bytes = std::fs::read(fixture(&format!("models/{m}/model.onnx"))).unwrap();
        let head: Vec<(usize, u8)> = edits.iter().map(|&(p, v)| (p % 40_000.min(bytes.len()), v)).collect();
        load_mutated(&bytes, &head, cut);
    }
}
