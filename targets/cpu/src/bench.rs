//! Single-op graphs for kernel benchmarks and tests: one `lpc.qgemm` (or
//! `lpc.linear`) over given weights, compiled like any model.

use lpc_ir::{Attr, DType, Dim, Graph, NewNode, Tensor, Type};
use lpc_runtime::formats::{rowscale, AxisLayout};
use lpc_runtime::{hadamard, Format};
use std::collections::BTreeMap;

/// What a `qgemm` graph computes besides the product.
#[derive(Clone, Debug, Default)]
pub struct QgemmSpec {
    pub rotate: usize,
    pub scaled: bool,
    pub bias: Option<Vec<f32>>,
    pub residual: bool,
    pub activation: Option<String>,
}

/// `y[m, n] = qgemm(x[m, k], W)` with `w` given as `[n, k]` rows (rotated,
/// scaled and packed here, as the compiler's passes would). Returns the
/// graph and the packed rows with their exponents (for references).
pub fn qgemm_graph(
    f: Format,
    m: Dim,
    k: usize,
    n: usize,
    mut w: Vec<f32>,
    spec: &QgemmSpec,
) -> (Graph, Vec<u8>, Vec<i32>) {
    if spec.rotate > 0 {
        hadamard::rotate_rows(&mut w, k, spec.rotate);
    }
    let wl = AxisLayout::new(&[n, k], 1, f.block_len());
    let wexp = if spec.scaled {
        rowscale::scale_rows(&mut w, &wl)
    } else {
        vec![0; n]
    };
    let l = f.layout(&[n, k], -1, true).expect("valid layout");
    let wp = f.quantize(&w, &l).expect("quantizable");
    drop(w);
    let bpr = wp.len() / n.max(1);
    let mut g = Graph::new("qgemm");
    let xi = g.add_input(
        "x",
        Some(Type::new(DType::F32, vec![m.clone(), Dim::Fixed(k)])),
    );
    let wc = g.add_const(
        "w",
        Tensor::new(DType::U8, vec![n, bpr], wp.clone().into()).expect("sized"),
    );
    let mut inputs = vec![Some(xi), Some(wc)];
    if spec.scaled {
        let b: Vec<u8> = wexp.iter().flat_map(|e| e.to_le_bytes()).collect();
        let t = Tensor::new(DType::I32, vec![n], b.into()).expect("sized");
        inputs.push(Some(g.add_const("e", t)));
    }
    if let Some(b) = &spec.bias {
        inputs.push(Some(g.add_const("b", Tensor::from_f32(vec![n], b))));
    }
    if spec.residual {
        let t = Type::new(DType::F32, vec![m.clone(), Dim::Fixed(n)]);
        inputs.push(Some(g.add_input("r", Some(t))));
    }
    let mut attrs = BTreeMap::new();
    let mut set = |k: &str, v: Attr| {
        attrs.insert(k.to_string(), v);
    };
    set("k", Attr::Int(k as i64));
    set("parts", Attr::Int(1));
    set("wformat", Attr::String(f.name().into()));
    set("wmode", Attr::String(f.mode_name().into()));
    set("aformat", Attr::String(f.name().into()));
    set("amode", Attr::String(f.mode_name().into()));
    set("rotate", Attr::Int(spec.rotate as i64));
    set("wscale", Attr::Int(spec.scaled as i64));
    set("bias", Attr::Int(spec.bias.is_some() as i64));
    set("residual", Attr::Int(spec.residual as i64));
    if spec.scaled {
        set("ascale", Attr::String("pow2".into()));
    }
    if let Some(a) = &spec.activation {
        set("activation", Attr::String(a.clone()));
    }
    let (_, outs) = g.add_node(
        NewNode {
            name: "q".into(),
            op: "lpc.qgemm".into(),
            attrs,
            inputs,
        },
        vec![(
            "y".into(),
            Some(Type::new(DType::F32, vec![m, Dim::Fixed(n)])),
        )],
    );
    g.outputs = outs;
    (g, wp, wexp)
}

/// `y[m, n] = x[m, k] · W[k, n]` in f32 (`lpc.linear`), the plain baseline.
pub fn linear_graph(m: Dim, k: usize, n: usize, w: &[f32]) -> Graph {
    let mut g = Graph::new("linear");
    let xi = g.add_input(
        "x",
        Some(Type::new(DType::F32, vec![m.clone(), Dim::Fixed(k)])),
    );
    let wc = g.add_const("w", Tensor::from_f32(vec![k, n], w));
    let (_, outs) = g.add_node(
        NewNode {
            name: "l".into(),
            op: "lpc.linear".into(),
            attrs: BTreeMap::new(),
            inputs: vec![Some(xi), Some(wc)],
        },
        vec![(
            "y".into(),
            Some(Type::new(DType::F32, vec![m, Dim::Fixed(n)])),
        )],
    );
    g.outputs = outs;
    g
}
