//! One snapshot test per pass: input IR text -> the pass -> printed IR,
//! verified after the pass. Re-bless with `INSTA_UPDATE=always cargo test -p
//! lpc-passes` (CI runs with `INSTA_UPDATE=no`).

use lpc_ir::interp::{self, Data, TensorValue};
use lpc_ir::{text, verify::verify, DType, Dim, Graph};
use lpc_passes::{
    by_name, FuseQgemm, Pass, QuantConfig, QuantizeInsert, Rotate, WeightsPrequantize,
};
use lpc_runtime::formats::{Format, Mxfp4Rounding};
use std::collections::HashMap;

/// Deterministic inputs for a test graph: symbols bound to 3, floats in
/// [-1, 1), integers in 0..3.
fn inputs(g: &Graph) -> HashMap<String, TensorValue> {
    let mut seed = 0x2545_F491u64;
    g.inputs
        .iter()
        .map(|&i| {
            let v = g.value(i);
            let ty = v.ty.as_ref().expect("test inputs are typed");
            let shape: Vec<usize> = ty
                .shape
                .as_ref()
                .map(|s| {
                    s.iter()
                        .map(|d| if let Dim::Fixed(n) = d { *n } else { 3 })
                        .collect()
                })
                .unwrap_or_default();
            let n: usize = shape.iter().product();
            let mut next = || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            let data = match ty.dtype {
                DType::Bool => Data::B((0..n).map(|_| next() % 2 == 0).collect()),
                d if d.is_float() => Data::F(
                    (0..n)
                        .map(|_| (next() % 2000) as f32 / 1000.0 - 1.0)
                        .collect(),
                ),
                _ => Data::I((0..n).map(|_| (next() % 3) as i64).collect()),
            };
            (
                v.name.clone(),
                TensorValue::with_dtype(ty.dtype, shape, data),
            )
        })
        .collect()
}

/// Parses `src`, runs the named passes in order, verifies, checks that the
/// interpreter computes the same outputs before and after, prints.
fn run(passes: &[&str], src: &str) -> String {
    let passes: Vec<Box<dyn Pass>> = passes
        .iter()
        .map(|p| by_name(p).unwrap_or_else(|| panic!("no pass {p}")))
        .collect();
    run_passes(passes, src, true)
}

fn run_passes(passes: Vec<Box<dyn Pass>>, src: &str, same_outputs: bool) -> String {
    let mut g = text::parse(src, &|_| None).expect("test IR parses");
    verify(&g).expect("test IR verifies");
    let ins = inputs(&g);
    let before = interp::run(&g, &ins).expect("test IR runs");
    for p in &passes {
        p.run(&mut g).expect("pass runs");
        verify(&g).unwrap_or_else(|e| panic!("after {}: {e}", p.name()));
    }
    let after = interp::run(&g, &ins).expect("transformed IR runs");
    if same_outputs {
        for (k, (a, b)) in before.iter().zip(&after).enumerate() {
            assert_eq!(a.shape, b.shape, "output {k}");
            for (x, y) in a.to_f64().iter().zip(b.to_f64()) {
                assert!(
                    (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                    "output {k}: {x} became {y}"
                );
            }
        }
    }
    text::print(&g)
}

/// A W4A4 MXFP4 configuration, quantizing every layer.
fn mxfp4_cfg(rotate: bool) -> QuantConfig {
    QuantConfig {
        weights: Some(Format::Mxfp4(Mxfp4Rounding::Rne)),
        activations: Some(Format::Mxfp4(Mxfp4Rounding::Rne)),
        rotate,
        quantize_all: true,
        ..Default::default()
    }
}

/// The quantization test graph: a 64 -> 2 linear layer.
fn quant_src() -> String {
    let w: Vec<String> = (0..128)
        .map(|i| format!("{:?}", ((i * 37 % 23) as f32 - 11.0) / 16.0))
        .collect();
    format!(
        "graph \"g\" [\"\" = 17] {{\n  input %0 \"x\": f32[batch, 64]\n  const %1 \"w\": f32[64, 2] = [{}]\n  %2 \"y\": f32[batch, 2] = lpc.linear(%0, %1) {{transposed = 0}} \"proj\"\n  output %2\n}}",
        w.join(", ")
    )
}

#[test]
fn dce() {
    insta::assert_snapshot!(run(
        &["dce"],
        r#"graph "g" ["" = 17] {
  input %0 "x": f32[2]
  %1 "dead" = Neg(%0) "neg"
  %2 "dead2" = Abs(%1) "abs"
  %3 "y" = Relu(%0) "relu"
  output %3
}"#
    ));
}

#[test]
fn cse() {
    insta::assert_snapshot!(run(
        &["cse", "dce"],
        r#"graph "g" ["" = 17] {
  input %0 "x": f32[2]
  const %1 "a": i64[1] = [0]
  const %2 "b": i64[1] = [0]
  %3 "u1" = Unsqueeze(%0, %1) "u1"
  %4 "u2" = Unsqueeze(%0, %2) "u2"
  %5 "y" = Add(%3, %4) "add"
  output %5
}"#
    ));
}

#[test]
fn infer_types() {
    insta::assert_snapshot!(run(
        &["infer-types"],
        r#"graph "g" ["" = 17] {
  input %0 "x": f32[batch, 4]
  input %1 "ids": i64[batch]
  %2 "s" = Shape(%0) "shape"
  %3 "c" = Cast(%1) {to = 1} "cast"
  %4 "e" = Equal(%1, %1) "eq"
  %5 "y" = Mul(%0, %0) "mul"
  %6 "w" = Where(%4, %3, %3) "where"
  output %2
  output %5
  output %6
}"#
    ));
}

#[test]
fn const_fold() {
    insta::assert_snapshot!(run(
        &["infer-types", "const-fold", "dce"],
        r#"graph "g" ["" = 17] {
  input %0 "x": f32[2, 3]
  const %1 "a": i64[2] = [1, 2]
  const %2 "b": i64[2] = [10, 20]
  %3 "sum" = Add(%1, %2) "add"
  %4 "shape" = Shape(%0) "shape"
  %5 "cat" = Concat(%3, %4) {axis = 0} "concat"
  %6 "same" = Cast(%0) {to = 1} "cast"
  %7 "id" = Identity(%6) "identity"
  %8 "y" = Relu(%7) "relu"
  output %5
  output %8
}"#
    ));
}

#[test]
fn fuse_linear() {
    insta::assert_snapshot!(run(
        &["fuse-linear", "dce"],
        r#"graph "g" ["" = 17] {
  input %0 "x": f32[batch, 2]
  const %1 "w_in_out": f32[2, 3] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
  const %2 "bias": f32[3] = [0.5, 0.5, 0.5]
  const %3 "w_out_in": f32[3, 2] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
  %4 "mm" = MatMul(%0, %1) "matmul"
  %5 "mm_b" = Add(%2, %4) "bias_add"
  %6 "wt" = Transpose(%3) {perm = ints[1, 0]} "transpose"
  %7 "tied" = MatMul(%0, %6) "lm_head"
  %8 "gemm" = Gemm(%0, %3, %2) {alpha = 1.0, beta = 1.0, transB = 1} "gemm"
  output %5
  output %7
  output %8
}"#
    ));
}

#[test]
fn fuse_rms_norm() {
    insta::assert_snapshot!(run(
        &["infer-types", "const-fold", "fuse-rms-norm", "dce"],
        r#"graph "g" ["" = 17, "com.microsoft" = 1] {
  input %0 "x": f32[batch, 4]
  input %1 "r": f32[batch, 4]
  const %2 "two": f32[] = [2.0]
  const %3 "eps": f32[] = [1e-6]
  const %4 "one": f32[] = [1.0]
  const %5 "w": f32[4] = [1.0, 1.5, 2.0, 2.5]
  %6 "xc" = Cast(%0) {to = 1} "ts/Cast"
  %7 "p" = Pow(%6, %2) "ts/Pow"
  %8 "m" = ReduceMean(%7) {axes = ints[-1], keepdims = 1} "ts/ReduceMean"
  %9 "a" = Add(%8, %3) "ts/Add"
  %10 "s" = Sqrt(%9) "ts/Sqrt"
  %11 "d" = Div(%4, %10) "ts/Div"
  %12 "n" = Mul(%6, %11) "ts/Mul"
  %13 "nc" = Cast(%12) {to = 1} "ts/Cast_1"
  %14 "ts_out" = Mul(%5, %13) "ts/Mul_1"
  %15 "op23_out" = RMSNormalization(%0, %5) {axis = -1, epsilon = 1e-6} "op23"
  %16 "ort_out", %17 "ort_inv" = SimplifiedLayerNormalization(%0, %5) {axis = -1, epsilon = 1e-6} "ort"
  %18 "skip_out", %19 "skip_mean", %20 "skip_inv", %21 "skip_sum" = com.microsoft.SkipSimplifiedLayerNormalization(%0, %1, %5) {epsilon = 1e-6} "skip"
  output %14
  output %15
  output %16
  output %18
  output %21
}"#
    ));
}

#[test]
fn fuse_activations() {
    insta::assert_snapshot!(run(
        &["fuse-activations", "dce"],
        r#"graph "g" ["" = 20] {
  input %0 "gate": f32[4]
  input %1 "up": f32[4]
  input %2 "h": f32[4]
  %3 "sig" = Sigmoid(%0) "act/Sigmoid"
  %4 "silu" = Mul(%0, %3) "act/Mul"
  %5 "y" = Mul(%4, %1) "mlp/Mul"
  %6 "sig2" = Sigmoid(%2) "act2/Sigmoid"
  %7 "silu2" = Mul(%6, %2) "act2/Mul"
  %8 "g" = Gelu(%2) {approximate = "tanh"} "gelu"
  const %9 "sqrt2": f32[] = [1.4142135]
  const %10 "one": f32[] = [1.0]
  const %11 "half": f32[] = [0.5]
  %12 "d" = Div(%2, %9) "erf_gelu/Div"
  %13 "e" = Erf(%12) "erf_gelu/Erf"
  %14 "e1" = Add(%13, %10) "erf_gelu/Add"
  %15 "xe" = Mul(%2, %14) "erf_gelu/Mul"
  %16 "ge" = Mul(%15, %11) "erf_gelu/Mul_1"
  output %5
  output %7
  output %8
  output %16
}"#
    ));
}

#[test]
fn fold_shapes() {
    insta::assert_snapshot!(run(
        &["infer-types", "fold-shapes", "const-fold", "cse", "dce"],
        r#"graph "g" ["" = 17] {
  input %0 "x": f32[batch, seq, 256]
  const %1 "i0": i64[] = [0]
  const %2 "i1": i64[] = [1]
  const %3 "i2": i64[] = [2]
  const %4 "ax": i64[1] = [0]
  const %5 "heads": i64[1] = [-1]
  const %6 "hd": i64[1] = [64]
  %7 "s" = Shape(%0) "Shape"
  %8 "b" = Gather(%7, %1) {axis = 0} "Gather"
  %9 "t" = Gather(%7, %2) {axis = 0} "Gather_1"
  %10 "f" = Gather(%7, %3) {axis = 0} "Gather_2"
  %11 "ub" = Unsqueeze(%8, %4) "Unsqueeze"
  %12 "ut" = Unsqueeze(%9, %4) "Unsqueeze_1"
  %13 "spec" = Concat(%11, %12, %5, %6) {axis = 0} "Concat"
  %14 "y" = Reshape(%0, %13) "Reshape"
  const %15 "four": i64[1] = [4]
  %16 "spec2" = Concat(%11, %12, %15, %6) {axis = 0} "Concat_1"
  %17 "e" = Expand(%14, %16) "Expand"
  output %17
  output %10
}"#
    ));
}

#[test]
fn fuse_attention() {
    insta::assert_snapshot!(run(
        &["fuse-attention", "dce"],
        r#"graph "g" ["" = 23] {
  input %0 "q": f32[1, 4, seq, 8]
  input %1 "k": f32[1, 2, seq, 8]
  input %2 "v": f32[1, 2, seq, 8]
  input %3 "f": f32[1, seq, 4]
  input %4 "mask": f32[1, 1, seq, seq]
  const %5 "one": i64[1] = [1]
  const %6 "two": i64[1] = [2]
  const %7 "zero": i64[1] = [0]
  const %8 "half": i64[1] = [4]
  const %9 "end": i64[1] = [9223372036854775807]
  const %10 "last": i64[1] = [-1]
  const %11 "rep": i64[5] = [1, 2, 2, 1, 1]
  const %12 "heads": i64[4] = [1, 4, -1, 8]
  const %13 "scale": f32[] = [0.35355338]
  %14 "ff": f32[1, seq, 8] = Concat(%3, %3) {axis = -1} "rope/Concat"
  %15 "cos": f32[1, seq, 8] = Cos(%14) "rope/Cos"
  %16 "sin": f32[1, seq, 8] = Sin(%14) "rope/Sin"
  %17 "c4": f32[1, 1, seq, 8] = Unsqueeze(%15, %5) "rope/Unsqueeze"
  %18 "s4": f32[1, 1, seq, 8] = Unsqueeze(%16, %5) "rope/Unsqueeze_1"
  %19 "x1": f32[1, 4, seq, 4] = Slice(%0, %7, %8, %10) "rope/Slice"
  %20 "x2": f32[1, 4, seq, 4] = Slice(%0, %8, %9, %10) "rope/Slice_1"
  %21 "nx2": f32[1, 4, seq, 4] = Neg(%20) "rope/Neg"
  %22 "rot": f32[1, 4, seq, 8] = Concat(%21, %19) {axis = -1} "rope/Concat_1"
  %23 "a": f32[1, 4, seq, 8] = Mul(%0, %17) "rope/Mul"
  %24 "b": f32[1, 4, seq, 8] = Mul(%22, %18) "rope/Mul_1"
  %25 "qr": f32[1, 4, seq, 8] = Add(%23, %24) "rope/Add"
  %26 "ku": f32[1, 2, 1, seq, 8] = Unsqueeze(%1, %6) "repeat_k/Unsqueeze"
  %27 "ke": f32[1, 2, 2, seq, 8] = Expand(%26, %11) "repeat_k/Expand"
  %28 "kr": f32[1, 4, seq, 8] = Reshape(%27, %12) "repeat_k/Reshape"
  %29 "vu": f32[1, 2, 1, seq, 8] = Unsqueeze(%2, %6) "repeat_v/Unsqueeze"
  %30 "ve": f32[1, 2, 2, seq, 8] = Expand(%29, %11) "repeat_v/Expand"
  %31 "vr": f32[1, 4, seq, 8] = Reshape(%30, %12) "repeat_v/Reshape"
  %32 "kt": f32[1, 4, 8, seq] = Transpose(%28) {perm = ints[0, 1, 3, 2]} "sdpa/Transpose"
  %33 "qk": f32[1, 4, seq, seq] = MatMul(%25, %32) "sdpa/MatMul"
  %34 "qks": f32[1, 4, seq, seq] = Mul(%33, %13) "sdpa/Mul"
  %35 "qkm": f32[1, 4, seq, seq] = Add(%34, %4) "sdpa/Add"
  %36 "p": f32[1, 4, seq, seq] = Softmax(%35) {axis = -1} "sdpa/Softmax"
  %37 "o": f32[1, 4, seq, 8] = MatMul(%36, %31) "sdpa/MatMul_1"
  %38 "o23": f32[1, 4, seq, 8] = Attention(%25, %28, %31, %4) {is_causal = 0, scale = 0.35355338} "op23/Attention"
  output %37
  output %38
}"#
    ));
}

#[test]
fn fuse_swiglu_split() {
    let passes = [
        "fuse-parallel-linear",
        "fuse-activations",
        "dce",
        "fuse-swiglu-split",
        "dce",
    ];
    let head = r#"graph "g" ["" = 17] {
  input %0 "x": f32[batch, 2]
  const %1 "wg": f32[2, 2] = [1.0, -2.0, 3.0, 0.5]
  const %2 "wu": f32[2, 2] = [0.5, 1.0, -1.0, 2.0]
  %3 "gate": f32[batch, 2] = lpc.linear(%0, %1) {transposed = 0} "gate_proj"
  %4 "up": f32[batch, 2] = lpc.linear(%0, %2) {transposed = 0} "up_proj"
"#;
    // A Split whose halves feed two SwiGLUs stays.
    insta::assert_snapshot!(run(
        &passes,
        &format!(
            r#"{head}  %5 "sig" = Sigmoid(%3) "act/Sigmoid"
  %6 "silu" = Mul(%3, %5) "act/Mul"
  %7 "y": f32[batch, 2] = Mul(%6, %4) "mlp/Mul"
  %8 "sig2" = Sigmoid(%4) "act2/Sigmoid"
  %9 "silu2" = Mul(%4, %8) "act2/Mul"
  %10 "y2": f32[batch, 2] = Mul(%9, %3) "mlp2/Mul"
  output %7
  output %10
}}"#
        )
    ));
    // The gate second: read in place, `gate = 1`.
    insta::assert_snapshot!(run(
        &passes,
        &format!(
            r#"{head}  %5 "sig" = Sigmoid(%4) "act/Sigmoid"
  %6 "silu" = Mul(%4, %5) "act/Mul"
  %7 "y": f32[batch, 2] = Mul(%6, %3) "mlp/Mul"
  output %7
}}"#
        )
    ));
}

#[test]
fn fuse_parallel_linear() {
    insta::assert_snapshot!(run(
        &["fuse-parallel-linear", "dce"],
        r#"graph "g" ["" = 17] {
  input %0 "x": f32[batch, 2]
  const %1 "wq": f32[2, 3] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
  const %2 "wk": f32[2, 2] = [1.0, 0.0, 0.0, 1.0]
  const %3 "bk": f32[2] = [0.5, -0.5]
  const %4 "wo": f32[3, 2] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
  %5 "q": f32[batch, 3] = lpc.linear(%0, %1) {transposed = 0} "q_proj"
  %6 "k": f32[batch, 2] = lpc.linear(%0, %2, %3) {transposed = 0} "k_proj"
  %7 "o": f32[batch, 2] = lpc.linear(%5, %4) {transposed = 0} "o_proj"
  output %6
  output %7
}"#
    ));
}

#[test]
fn rotate() {
    // Rotation alone is exact in real arithmetic: outputs unchanged.
    insta::assert_snapshot!(run_passes(
        vec![Box::new(Rotate(mxfp4_cfg(true)))],
        &quant_src(),
        true
    ));
}

#[test]
fn quantize_insert() {
    insta::assert_snapshot!(run_passes(
        vec![Box::new(QuantizeInsert(mxfp4_cfg(false)))],
        &quant_src(),
        false
    ));
}

#[test]
fn weights_prequantize() {
    insta::assert_snapshot!(run_passes(
        vec![
            Box::new(Rotate(mxfp4_cfg(true))),
            Box::new(QuantizeInsert(mxfp4_cfg(true))),
            Box::new(WeightsPrequantize(QuantConfig::default()))
        ],
        &quant_src(),
        false
    ));
}

#[test]
fn fuse_qgemm() {
    let mut g = text::parse(&quant_src(), &|_| None).unwrap();
    let prep: Vec<Box<dyn Pass>> = vec![
        Box::new(Rotate(mxfp4_cfg(true))),
        Box::new(QuantizeInsert(mxfp4_cfg(true))),
        Box::new(WeightsPrequantize(QuantConfig::default())),
    ];
    for p in &prep {
        p.run(&mut g).unwrap();
    }
    let ins = inputs(&g);
    let before = interp::run(&g, &ins).unwrap();
    FuseQgemm.run(&mut g).unwrap();
    by_name("dce").unwrap().run(&mut g).unwrap();
    verify(&g).unwrap();
    // Fusing does not change the quantized values.
    let after = interp::run(&g, &ins).unwrap();
    assert_eq!(before[0].to_f64(), after[0].to_f64());
    insta::assert_snapshot!(text::print(&g));
}

#[test]
fn fuse_qgemm_epilogue() {
    // y = silu(x W) + r: the activation and the residual move into the qgemm.
    let src = quant_src().replace(
        "  output %2\n}",
        "  input %3 \"r\": f32[batch, 2]\n  %4 \"a\": f32[batch, 2] = lpc.silu(%2) \"act\"\n  %5 \"out\": f32[batch, 2] = Add(%4, %3) \"residual\"\n  output %5\n}",
    );
    let mut g = text::parse(&src, &|_| None).unwrap();
    let prep: Vec<Box<dyn Pass>> = vec![
        Box::new(QuantizeInsert(mxfp4_cfg(false))),
        Box::new(WeightsPrequantize(QuantConfig::default())),
    ];
    for p in &prep {
        p.run(&mut g).unwrap();
    }
    let ins = inputs(&g);
    let before = interp::run(&g, &ins).unwrap();
    FuseQgemm.run(&mut g).unwrap();
    by_name("dce").unwrap().run(&mut g).unwrap();
    verify(&g).unwrap();
    let after = interp::run(&g, &ins).unwrap();
    for (a, b) in before[0].to_f64().iter().zip(after[0].to_f64()) {
        assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{a} vs {b}");
    }
    insta::assert_snapshot!(text::print(&g));
}

#[test]
fn bf16_linear() {
    // A transposed weight with an odd K (5): pairs [3, 2, 2], the last odd
    // half zero; x and W rounded to bf16 (1/3 is not a bf16 value).
    let src = r#"graph "g" ["" = 17] {
  input %0 "x": f32[batch, 5]
  const %1 "w": f32[2, 5] = [0.333333343, -1.0, 0.5, 2.0, 0.25, 1.5, 0.75, -0.125, 0.0625, -3.0]
  %2 "y": f32[batch, 2] = lpc.linear(%0, %1) {transposed = 1} "head"
  output %2
}"#;
    let mut g = text::parse(src, &|_| None).unwrap();
    let ins = inputs(&g);
    let before = interp::run(&g, &ins).unwrap();
    let out = run_passes(
        vec![Box::new(lpc_passes::Bf16Linear), by_name("dce").unwrap()],
        src,
        false,
    );
    lpc_passes::Bf16Linear.run(&mut g).unwrap();
    let after = interp::run(&g, &ins).unwrap();
    // bf16 keeps 8 significant bits: within 2^-8 of each term's size.
    let x = ins.values().next().unwrap().to_f64();
    let mag: f64 = x.iter().map(|v| v.abs()).sum::<f64>() * 3.0;
    for (a, b) in before[0].to_f64().iter().zip(after[0].to_f64()) {
        assert!(a != &b || x.iter().all(|v| *v == 0.0));
        assert!((a - b).abs() <= mag / 256.0, "{a} became {b}");
    }
    insta::assert_snapshot!(out);
}
