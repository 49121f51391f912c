//! `lpc inspect` and `lpc run` through the real binary, and the frontend's
//! handling of bad models and inputs: one line on stderr, exit code 2.

use crate::common::{lpc, models, s};
use lpc::npy;
use lpc::onnx::proto::ModelProto;
use lpc_ir::DType;
use prost::Message;

fn fails_with(args: &[&str], needle: &str) {
    let o = lpc(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    assert!(
        err.contains(needle),
        "{args:?}: expected `{needle}` in: {err}"
    );
}

#[test]
fn inspect_reports_the_model() {
    let m = models().join("qwen3_small_prefill_ts/model.onnx");
    let o = lpc(&["inspect", s(&m)]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "pytorch 2.15.0",
        "ai.onnx 17",
        "input_ids: i64[batch, sequence_length]",
        "19 MatMul",
        "unsupported ops: none",
    ] {
        assert!(out.contains(needle), "missing `{needle}` in\n{out}");
    }
}

#[test]
fn run_writes_outputs_that_match_onnxruntime() {
    let dir = models().join("wan_small_op23");
    let out = tempfile::tempdir().unwrap();
    let o = lpc(&[
        "run",
        s(&dir.join("model.onnx")),
        "--inputs",
        s(&dir.join("inputs")),
        "--outputs",
        s(out.path()),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = npy::read(&out.path().join("sample.npy")).unwrap();
    let want = npy::read(&dir.join("ref_ort/sample.npy")).unwrap();
    assert_eq!(got.shape, want.shape);
    let f = |d: &[u8]| {
        d.chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect::<Vec<_>>()
    };
    for (a, b) in f(&got.data).iter().zip(f(&want.data)) {
        assert!((a - b).abs() <= 1e-4 + 1e-4 * b.abs());
    }
    // --input NAME=FILE overrides a file of --inputs.
    let ids = dir.join("inputs/timestep.npy");
    let pair = format!("timestep={}", s(&ids));
    let o = lpc(&[
        "run",
        s(&dir.join("model.onnx")),
        "--inputs",
        s(&dir.join("inputs")),
        "--input",
        &pair,
    ]);
    assert!(o.status.success());
}

#[test]
fn bad_models_are_rejected_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let src = models().join("qwen3_small_prefill_ts/model.onnx");
    let bytes = std::fs::read(&src).unwrap();

    let trunc = t.join("truncated.onnx");
    std::fs::write(&trunc, &bytes[..bytes.len() / 2]).unwrap();
    fails_with(&["inspect", s(&trunc)], "not a valid ONNX model");
    fails_with(&["run", s(&trunc)], "truncated.onnx");
    fails_with(&["inspect", s(&t.join("missing.onnx"))], "missing.onnx");

    // The genai model without its external-data file, and with a short one.
    let genai = models().join("qwen3_small_genai_fp32");
    let lone = t.join("genai");
    std::fs::create_dir(&lone).unwrap();
    std::fs::copy(genai.join("model.onnx"), lone.join("model.onnx")).unwrap();
    fails_with(&["inspect", s(&lone.join("model.onnx"))], "model.onnx.data");
    let data = std::fs::read(genai.join("model.onnx.data")).unwrap();
    std::fs::write(lone.join("model.onnx.data"), &data[..data.len() - 100]).unwrap();
    fails_with(
        &["inspect", s(&lone.join("model.onnx"))],
        "external data file `model.onnx.data` has",
    );

    // An unknown op: listed by inspect, refused by run with its node named.
    let mut m = ModelProto::decode(&bytes[..]).unwrap();
    let node = &mut m.graph.as_mut().unwrap().node[40];
    let name = node.name.clone();
    node.op_type = "FancyOp".into();
    let fancy = t.join("fancy.onnx");
    std::fs::write(&fancy, m.encode_to_vec()).unwrap();
    let o = lpc(&["inspect", s(&fancy)]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("unsupported ops: FancyOp x1"));
    let inputs = models().join("qwen3_small_prefill_ts/inputs");
    fails_with(
        &["run", s(&fancy), "--inputs", s(&inputs)],
        &format!("node `{name}` (FancyOp): op is not supported"),
    );
}

#[test]
fn bad_inputs_are_rejected_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let dir = models().join("qwen3_small_decode_ts");
    let m = dir.join("model.onnx");
    let inputs = dir.join("inputs");
    let write = |name: &str, dtype: DType, shape: &[usize], bytes: Vec<u8>| {
        let p = t.join(name);
        npy::write(
            &mut std::fs::File::create(&p).unwrap(),
            dtype,
            shape,
            &bytes,
        )
        .unwrap();
        p
    };
    let f32_ids = write("ids_f32.npy", DType::F32, &[1, 1], vec![0; 4]);
    fails_with(
        &[
            "run",
            s(&m),
            "--inputs",
            s(&inputs),
            "--input",
            &format!("input_ids={}", s(&f32_ids)),
        ],
        "input `input_ids`: expected element type i64, got f32",
    );
    let rank1 = write("ids_r1.npy", DType::I64, &[1], vec![0; 8]);
    fails_with(
        &[
            "run",
            s(&m),
            "--inputs",
            s(&inputs),
            "--input",
            &format!("input_ids={}", s(&rank1)),
        ],
        "expected rank 2",
    );
    let mask2 = write("mask_b2.npy", DType::I64, &[2, 13], vec![0; 8 * 26]);
    fails_with(
        &[
            "run",
            s(&m),
            "--inputs",
            s(&inputs),
            "--input",
            &format!("attention_mask={}", s(&mask2)),
        ],
        "symbolic dimension `batch`",
    );
    fails_with(
        &[
            "run",
            s(&m),
            "--inputs",
            s(&inputs),
            "--input",
            &format!("nonsense={}", s(&mask2)),
        ],
        "the model has no input `nonsense`",
    );
    fails_with(&["run", s(&m)], "no value for input `input_ids`");
    fails_with(
        &[
            "run",
            s(&m),
            "--inputs",
            s(&inputs),
            "--outputs",
            s(&t.join("no/such/dir")),
        ],
        "output directory",
    );
}

#[test]
fn npz_bundles_in_and_out() {
    let dir = models().join("qwen3_small_decode_ts");
    let tmp = tempfile::tempdir().unwrap();
    // A bundle written by numpy's savez_compressed (deflate) ...
    let compressed = models().join("../npz/qwen3_decode_inputs_compressed.npz");
    let out = tmp.path().join("out.npz");
    let o = lpc(&[
        "run",
        s(&dir.join("model.onnx")),
        "--inputs",
        s(&compressed),
        "--outputs",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // ... and the stored bundle lpc writes, read back.
    let outs = npy::read_npz(&out).unwrap();
    assert_eq!(outs.len(), 5);
    let (name, logits) = &outs[0];
    assert_eq!(name, "logits");
    let want = npy::read(&dir.join("ref_ort/logits.npy")).unwrap();
    assert_eq!(logits.shape, want.shape);
    let f = |d: &[u8]| {
        d.chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect::<Vec<_>>()
    };
    for (a, b) in f(&logits.data).iter().zip(f(&want.data)) {
        assert!((a - b).abs() <= 1e-4 + 1e-4 * b.abs());
    }
    let bad = tmp.path().join("bad.npz");
    std::fs::write(&bad, b"not a zip").unwrap();
    fails_with(
        &["run", s(&dir.join("model.onnx")), "--inputs", s(&bad)],
        "not a .npz (zip) bundle",
    );
}

#[test]
fn run_check_compares_with_references() {
    let dir = models().join("qwen3_small_genai_fp32");
    let (m, ins) = (dir.join("model.onnx"), dir.join("decode_inputs"));
    let o = lpc(&[
        "run",
        s(&m),
        "--inputs",
        s(&ins),
        "--check",
        s(&dir.join("decode_ref_ort")),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.matches("check ").count(), 5, "{out}");
    // The prefill references do not fit the decode step.
    fails_with(
        &[
            "run",
            s(&m),
            "--inputs",
            s(&ins),
            "--check",
            s(&dir.join("ref_ort")),
        ],
        "logits: shape [1, 1, 512], reference [1, 12, 512]",
    );
    fails_with(
        &[
            "run",
            s(&m),
            "--inputs",
            s(&ins),
            "--check",
            s(&dir.join("decode_ref_torch")),
            "--tolerance",
            "1e-12",
        ],
        "outputs differ from",
    );
}

#[test]
fn quantization_options_and_their_errors() {
    let dir = models().join("qwen3_small_prefill_ts");
    let m = dir.join("model.onnx");
    let ins = dir.join("inputs");
    // -v prints the plan; the head stays unquantized, in bf16 by default.
    let o = lpc(&[
        "compile",
        s(&m),
        "--format",
        "hif4",
        "-v",
        "--override",
        "nomatch_xyz=hif8",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("quantization: weights hif4 (consortium), activations hif4 (consortium), rotate hadamard"), "{out}");
    assert!(
        out.contains("/m/lm_head/MatMul: bf16 (default: output head)"),
        "{out}"
    );
    assert!(
        out.contains("warning: --override nomatch_xyz: no linear layer matches"),
        "{out}"
    );
    assert_eq!(out.matches("lpc.qgemm(").count(), 8, "{out}");
    assert_eq!(out.matches("bf16 = 1").count(), 1, "{out}");
    // --unquantized f32 keeps it in f32.
    let o = lpc(&[
        "compile",
        s(&m),
        "--format",
        "hif4",
        "-v",
        "--unquantized",
        "f32",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("/m/lm_head/MatMul: f32 (default: output head)")
            && out.contains("unquantized in f32")
            && !out.contains("bf16 = 1"),
        "{out}"
    );
    // --exclude replaces the defaults; an empty one excludes nothing.
    let o = lpc(&["compile", s(&m), "--format", "mxfp4", "--exclude", ""]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout)
            .matches("lpc.qgemm(")
            .count(),
        9
    );
    let o = lpc(&["compile", s(&m), "--format", "mxfp4", "--exclude", "mlp"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout)
            .matches("lpc.qgemm(")
            .count(),
        5
    );
    // Overrides beat the defaults.
    let o = lpc(&[
        "compile",
        s(&m),
        "--format",
        "mxfp4",
        "--override",
        "lm_head=hif8",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("wformat = \"hif8\"") && out.matches("lpc.qgemm(").count() == 9,
        "{out}"
    );
    // lpc run --format runs the quantized graph.
    let o = lpc(&[
        "run",
        s(&m),
        "--inputs",
        s(&ins),
        "--format",
        "hif8",
        "--check",
        s(&dir.join("ref_ort")),
        "--tolerance",
        "0.5",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    fails_with(
        &[
            "run",
            s(&m),
            "--inputs",
            s(&ins),
            "--format",
            "hif8",
            "--check",
            s(&dir.join("ref_ort")),
        ],
        "outputs differ",
    );
    // Errors.
    fails_with(
        &["compile", s(&m), "--format", "fp4"],
        "unknown format `fp4`",
    );
    fails_with(
        &[
            "compile",
            s(&m),
            "--format",
            "mxfp4",
            "--unquantized",
            "f16",
        ],
        "--unquantized f16: expected bf16 or f32",
    );
    fails_with(
        &[
            "compile",
            s(&m),
            "--format",
            "mxfp4",
            "--exclude",
            "(unclosed",
        ],
        "--exclude `(unclosed`: not a valid regex",
    );
    fails_with(
        &[
            "compile",
            s(&m),
            "--format",
            "mxfp4",
            "--override",
            "q_proj",
        ],
        "expected REGEX=FORMAT",
    );
    fails_with(
        &[
            "compile",
            s(&m),
            "--format",
            "mxfp4",
            "--override",
            "q_proj=int3",
        ],
        "unknown format `int3`",
    );
    fails_with(
        &["compile", s(&m), "--format", "hif4", "--rounding", "rne"],
        "--rounding applies to mxfp4 and hif8 only",
    );
    fails_with(
        &["compile", s(&m), "--format", "mxfp4", "--rotate", "givens"],
        "expected hadamard or none",
    );
    fails_with(&["eval", s(&m), "--inputs", s(&ins)], "needs a format");
    fails_with(
        &[
            "eval",
            s(&m),
            "--inputs",
            s(&ins),
            "--format",
            "mxfp4",
            "--auto-mixed",
            "psnr>=3",
        ],
        "expected sqnr>=DB",
    );
    fails_with(
        &["compile", s(&m), "--activations", "hif8"],
        "without weights",
    );
    // eval writes its JSON report.
    let tmp = tempfile::tempdir().unwrap();
    let rep = tmp.path().join("r.json");
    let o = lpc(&[
        "eval",
        s(&m),
        "--inputs",
        s(&ins),
        "--format",
        "mxfp4",
        "--report",
        s(&rep),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let json = std::fs::read_to_string(&rep).unwrap();
    assert!(
        json.contains("\"output_sqnr_db\"") && json.contains("\"top1_agreement\""),
        "{json}"
    );
}

#[test]
fn config_file_and_compile_report() {
    let dir = models().join("qwen3_small_prefill_ts");
    let m = dir.join("model.onnx");
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("lpc.toml");
    std::fs::write(&cfg, "format = \"hif4\"\nexclude = []\nrotate = \"none\"\n").unwrap();
    // The file's options apply; an empty exclude list excludes nothing.
    let o = lpc(&["compile", s(&m), "--config", s(&cfg), "-v"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("weights hif4 (consortium)")
            && out.contains("rotate none, hif8 scale pow2, exclude nothing"),
        "{out}"
    );
    assert_eq!(out.matches("lpc.qgemm(").count(), 9);
    // The command line wins.
    let o = lpc(&[
        "compile",
        s(&m),
        "--config",
        s(&cfg),
        "-v",
        "--format",
        "mxfp4",
    ]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("weights mxfp4 (rne)"));
    // Calibration options from the file (GPTQ and smoothing on the given
    // template), reported by -v; the command line wins for the seed.
    std::fs::write(
        &cfg,
        "format = \"mxfp4\"\ngptq = true\ncalib-samples = 2\nseed = 5\nsmooth = 0.5\n",
    )
    .unwrap();
    let o = lpc(&[
        "compile",
        s(&m),
        "--config",
        s(&cfg),
        "-v",
        "--seed",
        "7",
        "--calib",
        s(&dir.join("inputs")),
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains("gptq (damp 0.01, 2 samples, seed 7)") && out.contains("smooth alpha 0.5"),
        "{out}"
    );
    std::fs::write(&cfg, "formt = \"hif4\"\n").unwrap();
    fails_with(
        &["compile", s(&m), "--config", s(&cfg)],
        "unknown field `formt`",
    );
    // compile --report measures on --calib inputs.
    let rep = tmp.path().join("r.json");
    fails_with(
        &["compile", s(&m), "--format", "hif8", "--report", s(&rep)],
        "--report needs a format and --calib",
    );
    let o = lpc(&[
        "compile",
        s(&m),
        "--format",
        "hif8",
        "--report",
        s(&rep),
        "--calib",
        s(&dir.join("inputs")),
        "-o",
        s(&tmp.path().join("m.ir")),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read_to_string(&rep)
        .unwrap()
        .contains("\"layers\""));
    assert!(std::fs::read_to_string(tmp.path().join("m.ir"))
        .unwrap()
        .contains("lpc.qgemm("));
}

/// `lpc compile --auto-mixed` compiles the chosen per-layer formats in;
/// `--gptq`/`--smooth`/`--auto-mixed` without `--calib` are usage errors.
#[test]
fn compile_auto_mixed_and_calibration_errors() {
    let dir = models().join("qwen3_small_prefill_ts");
    let (m, calib) = (dir.join("model.onnx"), dir.join("inputs"));
    let out = tempfile::tempdir().unwrap();
    let ir = out.path().join("am.ir");
    let o = lpc(&[
        "compile",
        s(&m),
        "--format",
        "mxfp4",
        "--auto-mixed",
        "sqnr>=20",
        "--calib",
        s(&calib),
        "-o",
        s(&ir),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("auto-mixed sqnr>=20:"), "{err}");
    let text = std::fs::read_to_string(&ir).unwrap();
    let (wide, narrow) = (
        text.matches("wformat = \"hif8\"").count(),
        text.matches("wformat = \"mxfp4\"").count(),
    );
    assert!(wide > 0 && narrow > 0, "{wide} hif8, {narrow} mxfp4 layers");
    for flag in [
        &["--gptq"][..],
        &["--smooth", "0.5"],
        &["--auto-mixed", "sqnr>=20"],
    ] {
        let mut args = vec!["compile", s(&m), "--format", "mxfp4"];
        args.extend_from_slice(flag);
        fails_with(&args, "--calib");
    }
    fails_with(
        &[
            "eval",
            s(&m),
            "--inputs",
            s(&calib),
            "--format",
            "mxfp4",
            "--smooth",
            "2",
        ],
        "ALPHA must be in [0, 1]",
    );
}
