//! Every kernel family run on the CPU through the host emulator (the same
//! MLIR bodies as the device module) against lpc's interpreter.

mod common;

use common::*;
use lpc_ir::interp::TensorValue;
use lpc_ir::{Attr, DType};
use lpc_target_gpu::kernels::elementwise;
use lpc_target_gpu::GpuCompiler;

/// Runs an elementwise op through its kernel, broadcasting like numpy.
fn run_elementwise(
    c: &GpuCompiler,
    op: &str,
    attrs: &[(&str, Attr)],
    ins: &[TensorValue],
) -> (TensorValue, TensorValue) {
    let want = reference(op, attrs, ins, 1).remove(0);
    let out_shape = want.shape.clone();
    let spec = elementwise::Spec {
        op: op.into(),
        rank: out_shape.len(),
        ins: ins.iter().map(|t| t.dtype).collect(),
        out: want.dtype,
        tanh_gelu: attrs
            .iter()
            .any(|(k, v)| *k == "approximate" && *v == Attr::String("tanh".into())),
    };
    let k = elementwise::kernel("lpc_ew", &spec).unwrap();
    let e = c.emulator(&[k]).unwrap();
    let n: usize = out_shape.iter().product();
    let mut bufs = vec![vec![0u8; want.dtype.size() * n]];
    bufs.extend(ins.iter().map(bytes));
    let mut args: Vec<A> = (0..=ins.len()).map(A::Buf).collect();
    args.extend(out_shape.iter().map(|&d| A::I(d as i64)));
    for t in ins {
        args.extend(bstrides(&t.shape, &out_shape).into_iter().map(A::I));
    }
    launch(&e, "lpc_ew", n, &mut bufs, &args);
    (value(want.dtype, &out_shape, &bufs[0]), want)
}

#[test]
fn elementwise_float_ops_match_the_interpreter() {
    let c = GpuCompiler::new();
    let mut r = Rng(7);
    let a = f32s(&[2, 3, 4], r.vec(24, 3.0));
    let b = f32s(&[3, 1], r.vec(3, 2.0));
    for op in ["Add", "Sub", "Mul", "Div", "Max", "Min"] {
        let (g, w) = run_elementwise(&c, op, &[], &[a.clone(), b.clone()]);
        assert_close(op, &g, &w, 1e-6);
    }
    for op in ["Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual"] {
        let (g, w) = run_elementwise(&c, op, &[], &[a.clone(), a.clone()]);
        assert_close(op, &g, &w, 0.0);
        let (g, w) = run_elementwise(&c, op, &[], &[a.clone(), b.clone()]);
        assert_close(op, &g, &w, 0.0);
    }
    // Large arguments for the range reductions of sin/cos/exp.
    let big = f32s(&[5, 7], r.vec(35, 40.0));
    for op in [
        "Neg",
        "Abs",
        "Sqrt",
        "Exp",
        "Sin",
        "Cos",
        "Tanh",
        "Erf",
        "Sigmoid",
        "Relu",
        "Reciprocal",
        "Floor",
        "Ceil",
        "Gelu",
        "lpc.gelu",
        "lpc.silu",
    ] {
        let x = if op == "Sqrt" {
            f32s(&[5, 7], r.vec(35, 9.0).iter().map(|v| v.abs()).collect())
        } else {
            big.clone()
        };
        let (g, w) = run_elementwise(&c, op, &[], std::slice::from_ref(&x));
        assert_close(op, &g, &w, 1e-6);
        let _ = x;
    }
    let pos = f32s(&[64], (0..64).map(|i| i as f32 * 37.5).collect());
    for op in ["Sin", "Cos"] {
        let (g, w) = run_elementwise(&c, op, &[], std::slice::from_ref(&pos));
        assert_close(op, &g, &w, 1e-6);
    }
    let t = [("approximate", Attr::String("tanh".into()))];
    let (g, w) = run_elementwise(&c, "lpc.gelu", &t, std::slice::from_ref(&big));
    assert_close("gelu tanh", &g, &w, 1e-6);
    let (g, w) = run_elementwise(&c, "lpc.swiglu", &[], &[big.clone(), big.clone()]);
    assert_close("swiglu", &g, &w, 1e-6);
}

#[test]
fn elementwise_int_bool_and_cast_ops_match_the_interpreter() {
    let c = GpuCompiler::new();
    let a = TensorValue::i64(vec![2, 3], vec![5, -7, 9, 0, 12, -3]);
    let b = TensorValue::i64(vec![3], vec![2, 3, -4]);
    for op in [
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Max",
        "Min",
        "Equal",
        "Less",
        "LessOrEqual",
    ] {
        let (g, w) = run_elementwise(&c, op, &[], &[a.clone(), b.clone()]);
        assert_close(op, &g, &w, 0.0);
    }
    let p = TensorValue::bool(vec![4], vec![true, false, true, false]);
    let q = TensorValue::bool(vec![4], vec![true, true, false, false]);
    for op in ["And", "Or", "Xor", "Equal"] {
        let (g, w) = run_elementwise(&c, op, &[], &[p.clone(), q.clone()]);
        assert_close(op, &g, &w, 0.0);
    }
    let (g, w) = run_elementwise(&c, "Not", &[], std::slice::from_ref(&p));
    assert_close("Not", &g, &w, 0.0);
    let x = f32s(&[2, 4], vec![1.5, -2.25, 3.0, 0.0, -0.5, 7.75, 100.0, -3.5]);
    let y = f32s(&[4], vec![9.0, 8.0, 7.0, 6.0]);
    let (g, w) = run_elementwise(&c, "Where", &[], &[p.clone(), x.clone(), y.clone()]);
    assert_close("Where f32", &g, &w, 0.0);
    let m = TensorValue::bool(vec![3], vec![true, false, true]);
    let (g, w) = run_elementwise(&c, "Where", &[], &[m, a.clone(), b.clone()]);
    assert_close("Where i64", &g, &w, 0.0);
    for (to, name) in [
        (DType::I64, "f32->i64"),
        (DType::F16, "f32->f16"),
        (DType::Bf16, "f32->bf16"),
        (DType::Bool, "f32->bool"),
        (DType::I32, "f32->i32"),
    ] {
        let at = [("to", Attr::Int(to.onnx_code() as i64))];
        let (g, w) = run_elementwise(&c, "Cast", &at, std::slice::from_ref(&x));
        assert_close(name, &g, &w, 0.0);
    }
    let at = [("to", Attr::Int(DType::F32.onnx_code() as i64))];
    let (g, w) = run_elementwise(&c, "Cast", &at, std::slice::from_ref(&a));
    assert_close("i64->f32", &g, &w, 0.0);
    let (g, w) = run_elementwise(&c, "Cast", &at, std::slice::from_ref(&p));
    assert_close("bool->f32", &g, &w, 0.0);
}
