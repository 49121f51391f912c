//! Importing a model whose weights live in an external-data file maps them:
//! peak resident memory stays below 1.5x the largest tensor + 200 MB, far
//! below the model's size. The model (5 x 64 MB weights, 320 MB) is written
//! to a temporary folder in 1 MB chunks, so the test itself stays small.

use lpc::onnx::proto::{
    tensor_shape_proto, type_proto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
    DATA_LOCATION_EXTERNAL,
};
use prost::Message;
use std::io::Write;
use std::process::Command;

const K: usize = 4096;
const LAYERS: usize = 5;

fn value_info(name: &str, dims: &[i64]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&d| tensor_shape_proto::Dimension {
            value: Some(tensor_shape_proto::dimension::Value::DimValue(d)),
            denotation: String::new(),
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: 1,
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: String::new(),
        }),
        ..Default::default()
    }
}

#[test]
fn external_data_import_peak_memory() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = K * K * 4;
    let mut data =
        std::io::BufWriter::new(std::fs::File::create(dir.path().join("big.onnx.data")).unwrap());
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i * 31 % 251) as u8).collect();
    let (mut inits, mut nodes) = (Vec::new(), Vec::new());
    for l in 0..LAYERS {
        for _ in 0..bytes / chunk.len() {
            data.write_all(&chunk).unwrap();
        }
        let kv = |k: &str, v: String| StringStringEntryProto {
            key: k.into(),
            value: v,
        };
        inits.push(TensorProto {
            name: format!("w{l}"),
            dims: vec![K as i64, K as i64],
            data_type: 1,
            data_location: DATA_LOCATION_EXTERNAL,
            external_data: vec![
                kv("location", "big.onnx.data".into()),
                kv("offset", (l * bytes).to_string()),
                kv("length", bytes.to_string()),
            ],
            ..Default::default()
        });
        let input = if l == 0 {
            "x".to_string()
        } else {
            format!("h{l}")
        };
        nodes.push(NodeProto {
            input: vec![input, format!("w{l}")],
            output: vec![format!("h{}", l + 1)],
            name: format!("mm{l}"),
            op_type: "MatMul".into(),
            ..Default::default()
        });
    }
    data.flush().unwrap();
    let model = ModelProto {
        ir_version: 10,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 21,
        }],
        producer_name: "lpc large-import test".into(),
        graph: Some(GraphProto {
            node: nodes,
            name: "big".into(),
            initializer: inits,
            input: vec![value_info("x", &[1, K as i64])],
            output: vec![value_info(&format!("h{LAYERS}"), &[1, K as i64])],
            ..Default::default()
        }),
        ..Default::default()
    };
    let path = dir.path().join("big.onnx");
    std::fs::write(&path, model.encode_to_vec()).unwrap();

    let out = Command::new("/usr/bin/time")
        .arg("-v")
        .arg(env!("CARGO_BIN_EXE_lpc"))
        .args(["inspect", path.to_str().unwrap()])
        .output()
        .expect("GNU time is installed by scripts/setup.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains(&format!("f32: {LAYERS} tensors, {} values", LAYERS * K * K)),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("linear layers ({LAYERS})")),
        "{stdout}"
    );
    let peak_kb: usize = stderr
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .expect("time -v reports the peak")
        .parse()
        .unwrap();
    let limit_kb = (bytes * 3 / 2 + (200 << 20)) / 1024;
    eprintln!(
        "model {} MB, largest tensor {} MB, peak RSS {} MB (limit {} MB)",
        (LAYERS * bytes) >> 20,
        bytes >> 20,
        peak_kb >> 10,
        limit_kb >> 10
    );
    assert!(
        peak_kb < limit_kb,
        "peak RSS {peak_kb} kB over {limit_kb} kB"
    );
}
