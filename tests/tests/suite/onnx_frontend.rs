//! The ONNX frontend on every fixture model: lpc's prost decoder agrees with
//! an independent decoder (onnx-protobuf), and every model imports, verifies
//! and round-trips through the textual IR.

use lpc::onnx::{import, proto, OnnxModel};
use lpc_ir::{text, verify::verify};
use lpc_tests::fixture;
use onnx_protobuf::Message;

const MODELS: [&str; 6] = [
    "qwen3_small_prefill_ts",
    "qwen3_small_decode_ts",
    "qwen3_small_prefill_op23",
    "qwen3_small_genai_fp32",
    "wan_small_ts",
    "wan_small_op23",
];

fn model_path(m: &str) -> std::path::PathBuf {
    fixture(&format!("models/{m}/model.onnx"))
}

fn check_tensor(ours: &proto::TensorProto, theirs: &onnx_protobuf::TensorProto, at: &str) {
    assert_eq!(ours.name, theirs.name, "{at}");
    assert_eq!(ours.dims, theirs.dims, "{at} {}", ours.name);
    assert_eq!(ours.data_type, theirs.data_type, "{at} {}", ours.name);
    assert_eq!(
        &ours.raw_data[..],
        &theirs.raw_data[..],
        "{at} {}",
        ours.name
    );
    assert_eq!(ours.float_data, theirs.float_data, "{at} {}", ours.name);
    assert_eq!(ours.int64_data, theirs.int64_data, "{at} {}", ours.name);
    assert_eq!(ours.int32_data, theirs.int32_data, "{at} {}", ours.name);
    let ext = |e: &[(String, String)]| e.to_vec();
    assert_eq!(
        ext(&ours
            .external_data
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect::<Vec<_>>()),
        ext(&theirs
            .external_data
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect::<Vec<_>>()),
        "{at} {}",
        ours.name
    );
}

fn check_value_infos(
    ours: &[proto::ValueInfoProto],
    theirs: &[onnx_protobuf::ValueInfoProto],
    at: &str,
) {
    assert_eq!(ours.len(), theirs.len(), "{at}");
    for (a, b) in ours.iter().zip(theirs) {
        assert_eq!(a.name, b.name, "{at}");
        let Some(proto::type_proto::Value::TensorType(t)) =
            a.r#type.as_ref().and_then(|t| t.value.as_ref())
        else {
            panic!("{at} {}: not a tensor type", a.name)
        };
        let bt = b.type_.tensor_type();
        assert_eq!(t.elem_type, bt.elem_type, "{at} {}", a.name);
        let dims: Vec<String> = t
            .shape
            .iter()
            .flat_map(|s| &s.dim)
            .map(|d| format!("{:?}", d.value))
            .collect();
        assert_eq!(dims.len(), bt.shape.dim.len(), "{at} {}", a.name);
        for (d, e) in t.shape.iter().flat_map(|s| &s.dim).zip(&bt.shape.dim) {
            use proto::tensor_shape_proto::dimension::Value as D;
            match &d.value {
                Some(D::DimValue(v)) => assert_eq!(*v, e.dim_value(), "{at} {}", a.name),
                Some(D::DimParam(p)) => assert_eq!(p, e.dim_param(), "{at} {}", a.name),
                None => assert!(!e.has_dim_value() && !e.has_dim_param()),
            }
        }
    }
}

#[test]
fn prost_decoder_agrees_with_onnx_protobuf() {
    for m in MODELS {
        let path = model_path(m);
        let ours = OnnxModel::load(&path).unwrap().proto;
        let theirs =
            onnx_protobuf::ModelProto::parse_from_bytes(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(ours.ir_version, theirs.ir_version, "{m}");
        assert_eq!(ours.producer_name, theirs.producer_name, "{m}");
        assert_eq!(ours.producer_version, theirs.producer_version, "{m}");
        let opsets = |v: Vec<(String, i64)>| v;
        assert_eq!(
            opsets(
                ours.opset_import
                    .iter()
                    .map(|o| (o.domain.clone(), o.version))
                    .collect()
            ),
            opsets(
                theirs
                    .opset_import
                    .iter()
                    .map(|o| (o.domain.clone(), o.version))
                    .collect()
            ),
            "{m}"
        );
        let (g, tg) = (ours.graph.as_ref().unwrap(), &theirs.graph);
        assert_eq!(g.name, tg.name, "{m}");
        check_value_infos(&g.input, &tg.input, m);
        check_value_infos(&g.output, &tg.output, m);
        check_value_infos(&g.value_info, &tg.value_info, m);
        assert_eq!(g.initializer.len(), tg.initializer.len(), "{m}");
        for (a, b) in g.initializer.iter().zip(&tg.initializer) {
            check_tensor(a, b, m);
        }
        assert_eq!(g.node.len(), tg.node.len(), "{m}");
        for (a, b) in g.node.iter().zip(&tg.node) {
            let at = format!("{m} node {}", a.name);
            assert_eq!(
                (&a.name, &a.op_type, &a.domain),
                (&b.name, &b.op_type, &b.domain),
                "{at}"
            );
            assert_eq!((&a.input, &a.output), (&b.input, &b.output), "{at}");
            assert_eq!(a.attribute.len(), b.attribute.len(), "{at}");
            for (x, y) in a.attribute.iter().zip(&b.attribute) {
                assert_eq!(x.name, y.name, "{at}");
                assert_eq!(x.r#type, y.type_.value(), "{at} {}", x.name);
                assert_eq!(
                    (x.i, x.f.to_bits()),
                    (y.i, y.f.to_bits()),
                    "{at} {}",
                    x.name
                );
                assert_eq!(&x.s[..], &y.s[..], "{at} {}", x.name);
                assert_eq!(x.ints, y.ints, "{at} {}", x.name);
                assert_eq!(x.floats, y.floats, "{at} {}", x.name);
                assert_eq!(x.t.is_some(), y.t.is_some(), "{at} {}", x.name);
                if let Some(t) = &x.t {
                    check_tensor(t, &y.t, &at);
                }
            }
        }
    }
}

#[test]
fn every_fixture_imports_verifies_and_round_trips() {
    for m in MODELS {
        let model = OnnxModel::load(&model_path(m)).unwrap();
        let g = import(&model).unwrap_or_else(|e| panic!("{m}: {e}"));
        verify(&g).unwrap_or_else(|e| panic!("{m}: {e}"));
        let printed = text::print(&g);
        let g2 =
            text::parse(&printed, &text::constants_of(&g)).unwrap_or_else(|e| panic!("{m}: {e}"));
        verify(&g2).unwrap();
        assert_eq!(text::print(&g2), printed, "{m}: print-parse-print differs");
        assert!(g.num_nodes() > 10, "{m}");
        // The canonical form round-trips too.
        let mut c = g.clone();
        let pm = lpc_passes::PassManager::new(
            lpc_passes::canonicalize(),
            lpc_passes::RunOptions {
                verify: true,
                ..Default::default()
            },
        );
        pm.run(&mut c).unwrap_or_else(|e| panic!("{m}: {e}"));
        let printed = text::print(&c);
        let c2 = text::parse(&printed, &text::constants_of(&c))
            .unwrap_or_else(|e| panic!("{m} canonical: {e}"));
        verify(&c2).unwrap();
        assert_eq!(
            text::print(&c2),
            printed,
            "{m}: canonical print-parse-print differs"
        );
    }
}

/// Tensor bytes are zero-copy slices of the mapped files, inline or external.
#[test]
fn weights_are_not_copied() {
    for m in ["qwen3_small_prefill_ts", "qwen3_small_genai_fp32"] {
        let model = OnnxModel::load(&model_path(m)).unwrap();
        let g = import(&model).unwrap();
        let file_len = std::fs::metadata(model_path(m)).unwrap().len() as usize;
        let big: Vec<_> = g
            .value_ids()
            .filter_map(|v| g.constant(v))
            .filter(|t| t.data.len() > 4096)
            .collect();
        assert!(!big.is_empty());
        // Two constants of one file are slices of one allocation: their
        // addresses lie within one file-sized span.
        let lo = big.iter().map(|t| t.data.as_ptr() as usize).min().unwrap();
        let hi = big
            .iter()
            .map(|t| t.data.as_ptr() as usize + t.data.len())
            .max()
            .unwrap();
        let ext = fixture(&format!("models/{m}/model.onnx.data"));
        let span = file_len.max(
            std::fs::metadata(&ext)
                .map(|x| x.len() as usize)
                .unwrap_or(0),
        );
        assert!(
            hi - lo <= span,
            "{m}: constants are not views of one mapped file"
        );
    }
}
