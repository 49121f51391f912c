//! One-op graphs run by lpc's interpreter (the reference) and by the GPU
//! kernels through the host emulator.

#![allow(dead_code)]

use lpc_ir::interp::{self, Data, TensorValue};
use lpc_ir::{Attr, DType, Graph, NewNode, Type};
use lpc_target_gpu::emulate::{Arg, Emulator};
use std::collections::{BTreeMap, HashMap};

/// A deterministic pseudo-random stream (xorshift), values in [-1, 1).
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f32() * scale).collect()
    }
}

/// Runs one node `op(inputs)` with `attrs` through the interpreter.
pub fn reference(
    op: &str,
    attrs: &[(&str, Attr)],
    inputs: &[TensorValue],
    outputs: usize,
) -> Vec<TensorValue> {
    let ins: Vec<Option<TensorValue>> = inputs.iter().cloned().map(Some).collect();
    reference_opt(op, attrs, &ins, outputs)
}

/// As [`reference`], with omitted optional inputs.
pub fn reference_opt(
    op: &str,
    attrs: &[(&str, Attr)],
    inputs: &[Option<TensorValue>],
    outputs: usize,
) -> Vec<TensorValue> {
    let mut g = Graph::new("case");
    let mut ins = Vec::new();
    let mut feed = HashMap::new();
    for (j, t) in inputs.iter().enumerate() {
        let Some(t) = t else {
            ins.push(None);
            continue;
        };
        let name = format!("in{j}");
        ins.push(Some(
            g.add_input(name.clone(), Some(Type::fixed(t.dtype, &t.shape))),
        ));
        feed.insert(name, t.clone());
    }
    let attrs: BTreeMap<String, Attr> = attrs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let (_, outs) = g.add_node(
        NewNode {
            name: "node".into(),
            op: op.into(),
            attrs,
            inputs: ins,
        },
        (0..outputs).map(|k| (format!("out{k}"), None)).collect(),
    );
    g.outputs = outs;
    g.opsets.insert(String::new(), 23);
    interp::run(&g, &feed).unwrap_or_else(|e| panic!("{op}: {e}"))
}

/// Device bytes of a value (its storage type).
pub fn bytes(t: &TensorValue) -> Vec<u8> {
    t.to_tensor().data.to_vec()
}

/// A value of `dtype`/`shape` from device bytes.
pub fn value(dtype: DType, shape: &[usize], b: &[u8]) -> TensorValue {
    let t = lpc_ir::Tensor::new(dtype, shape.to_vec(), b.to_vec().into()).expect("sized");
    TensorValue::from_tensor(&t)
}

/// Broadcast strides of `shape` read as `out` (right-aligned, 0 on
/// broadcast axes).
pub fn bstrides(shape: &[usize], out: &[usize]) -> Vec<i64> {
    let mut st = vec![0i64; out.len()];
    let mut s = 1i64;
    for k in 0..shape.len() {
        let a = out.len() - 1 - k;
        let d = shape[shape.len() - 1 - k];
        st[a] = if d == 1 { 0 } else { s };
        s *= d as i64;
    }
    st
}

/// Asserts `got` equals `want` within `tol` (relative to want's max magnitude),
/// same shape and dtype.
pub fn assert_close(what: &str, got: &TensorValue, want: &TensorValue, tol: f64) {
    assert_eq!(got.shape, want.shape, "{what}: shape");
    assert_eq!(got.dtype, want.dtype, "{what}: dtype");
    let (g, w) = (got.to_f64(), want.to_f64());
    let scale = w.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let ok = (a - b).abs() <= tol * scale || (a.is_nan() && b.is_nan()) || a == b;
        assert!(
            ok,
            "{what}[{i}]: {a} vs reference {b} (tol {tol} × {scale})"
        );
    }
}

pub fn f32s(shape: &[usize], v: Vec<f32>) -> TensorValue {
    TensorValue::f32(shape.to_vec(), v)
}

pub fn data_len(t: &TensorValue) -> usize {
    match &t.data {
        Data::F(v) => v.len(),
        Data::I(v) => v.len(),
        Data::B(v) => v.len(),
    }
}

/// Runs kernel `name` over `n` items: `bufs` are mutable device buffers
/// referenced by `args` as `Buf(index)`.
pub enum A {
    Buf(usize),
    I(i64),
    F(f32),
}
pub fn launch(e: &Emulator, name: &str, n: usize, bufs: &mut [Vec<u8>], args: &[A]) {
    // Split the buffers into disjoint mutable slices in argument order.
    let mut ptrs: Vec<Option<&mut [u8]>> = bufs.iter_mut().map(|b| Some(&mut b[..])).collect();
    let mut out = Vec::new();
    for a in args {
        out.push(match a {
            A::Buf(k) => Arg::Buf(ptrs[*k].take().expect("each buffer passed once")),
            A::I(v) => Arg::Index(*v),
            A::F(v) => Arg::F32(*v),
        });
    }
    e.launch(name, n, &mut out).unwrap();
}
