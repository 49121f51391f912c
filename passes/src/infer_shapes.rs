//! Symbolic shape inference: the shape of every node result, with dimensions
//! that are constants, named symbols (`batch`, `sequence_length`, sums such
//! as `past_sequence_length + sequence_length`) or unknown; and the symbolic
//! *values* of small integer tensors (the shape arithmetic of TorchScript
//! exports: `Shape`, `Gather`, `Unsqueeze`, `Concat`, ...), used by
//! `fold-shapes`.

use crate::util::arg;
use lpc_ir::{Def, Dim, Graph, Node, NodeId, ValueId};
use std::collections::HashMap;

/// One element of a symbolic integer tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SymInt {
    Known(i64),
    /// A dimension symbol (or sum of symbols): non-negative at run time.
    Sym(String),
    Unknown,
}

impl SymInt {
    fn from_dim(d: &Dim) -> Self {
        match d {
            Dim::Fixed(n) => SymInt::Known(*n as i64),
            Dim::Sym(s) => SymInt::Sym(s.clone()),
            Dim::Unknown => SymInt::Unknown,
        }
    }
    fn to_dim(&self) -> Dim {
        match self {
            SymInt::Known(n) if *n >= 0 => Dim::Fixed(*n as usize),
            SymInt::Sym(s) => Dim::Sym(s.clone()),
            _ => Dim::Unknown,
        }
    }
}

/// Symbolic values of small integer tensors (rank <= 1, at most 16 elements).
pub type SymValues = HashMap<ValueId, Vec<SymInt>>;

fn add_dims(a: &Dim, b: &Dim) -> Dim {
    match (a, b) {
        (Dim::Fixed(x), Dim::Fixed(y)) => Dim::Fixed(x + y),
        (Dim::Fixed(0), d) | (d, Dim::Fixed(0)) => d.clone(),
        (Dim::Sym(x), Dim::Sym(y)) => {
            let mut terms: Vec<&str> = x.split(" + ").chain(y.split(" + ")).collect();
            terms.sort();
            Dim::Sym(terms.join(" + "))
        }
        _ => Dim::Unknown,
    }
}

fn broadcast(shapes: &[&Vec<Dim>]) -> Vec<Dim> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    (0..rank)
        .map(|i| {
            let mut out = Dim::Fixed(1);
            for s in shapes {
                let Some(d) = (i + s.len()).checked_sub(rank).map(|j| &s[j]) else {
                    continue;
                };
                out = match (&out, d) {
                    (Dim::Fixed(1), d) => d.clone(),
                    (o, Dim::Fixed(1)) => o.clone(),
                    (o, d) if o == d => o.clone(),
                    (Dim::Fixed(n), _) | (_, Dim::Fixed(n)) => Dim::Fixed(*n),
                    _ => Dim::Unknown,
                };
            }
            out
        })
        .collect()
}

/// An element count as a constant times a product of symbols (`None` if a
/// dimension is unknown or a sum).
fn factors(ds: &[Dim]) -> Option<(usize, Vec<String>)> {
    let mut k = 1usize;
    let mut syms = Vec::new();
    for d in ds {
        match d {
            Dim::Fixed(n) => k *= n,
            Dim::Sym(s) if !s.contains(" + ") => syms.push(s.clone()),
            _ => return None,
        }
    }
    Some((k, syms))
}

fn norm_axis(a: i64, rank: usize) -> Option<usize> {
    let v = if a < 0 { a + rank as i64 } else { a };
    (0..rank as i64).contains(&v).then_some(v as usize)
}

/// Known integer elements of an operand (constant or symbolic value).
fn known_ints(g: &Graph, sv: &SymValues, v: Option<ValueId>) -> Option<Vec<i64>> {
    let v = v?;
    if let Some(t) = g.constant(v) {
        return t.to_i64_vec();
    }
    sv.get(&v)?
        .iter()
        .map(|x| {
            if let SymInt::Known(n) = x {
                Some(*n)
            } else {
                None
            }
        })
        .collect()
}

fn sym_of(g: &Graph, sv: &SymValues, v: Option<ValueId>) -> Option<Vec<SymInt>> {
    let v = v?;
    if let Some(t) = g.constant(v) {
        if t.dims.len() <= 1 && t.len() <= 16 {
            return Some(t.to_i64_vec()?.into_iter().map(SymInt::Known).collect());
        }
        return None;
    }
    sv.get(&v).cloned()
}

fn shape_of(g: &Graph, v: Option<ValueId>) -> Option<Vec<Dim>> {
    g.value(v?).ty.as_ref()?.shape.clone()
}

/// The symbolic value of output 0 of an integer node, if it can be tracked.
fn sym_value(g: &Graph, sv: &SymValues, node: &Node) -> Option<Vec<SymInt>> {
    let a0 = arg(node, 0);
    match node.op.as_str() {
        "Shape" => {
            let s = shape_of(g, a0)?;
            let r = s.len() as i64;
            let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
            let (st, en) = (
                clamp(node.int("start").unwrap_or(0)),
                clamp(node.int("end").unwrap_or(r)),
            );
            Some(s[st..en.max(st)].iter().map(SymInt::from_dim).collect())
        }
        "Cast" | "Identity" | "Unsqueeze" | "Squeeze" | "Reshape" | "Flatten" => {
            let d = g.value(node.outputs[0]).ty.as_ref()?.dtype;
            (!d.is_float()).then(|| sym_of(g, sv, a0)).flatten()
        }
        "Gather" => {
            let data = sym_of(g, sv, a0)?;
            let idx = known_ints(g, sv, arg(node, 1))?;
            idx.iter()
                .map(|&i| {
                    let j = if i < 0 { i + data.len() as i64 } else { i };
                    data.get(usize::try_from(j).ok()?).cloned()
                })
                .collect()
        }
        "Concat" => {
            let mut out = Vec::new();
            for v in &node.inputs {
                out.extend(sym_of(g, sv, *v)?);
            }
            (out.len() <= 16).then_some(out)
        }
        "Slice" => {
            let data = sym_of(g, sv, a0)?;
            let (st, en) = (
                known_ints(g, sv, arg(node, 1))?,
                known_ints(g, sv, arg(node, 2))?,
            );
            let step = arg(node, 4).map_or(Some(vec![1]), |v| known_ints(g, sv, Some(v)))?;
            if st.len() != 1 || en.len() != 1 || step != [1] {
                return None;
            }
            let n = data.len() as i64;
            let c = |v: i64| (if v < 0 { v + n } else { v }).clamp(0, n) as usize;
            let (s, e) = (c(st[0]), c(en[0]));
            Some(data[s..e.max(s)].to_vec())
        }
        "Add" | "Sub" | "Mul" | "Div" | "Equal" | "Where" | "ConstantOfShape" | "Max" | "Min" => {
            let ints = |k: usize| sym_of(g, sv, arg(node, k));
            if node.op == "ConstantOfShape" {
                let shape = known_ints(g, sv, a0)?;
                let n: i64 = shape.iter().product();
                let val = match node.attr("value") {
                    Some(lpc_ir::Attr::Tensor(t)) => t.to_i64_vec()?.first().copied()?,
                    _ => 0,
                };
                return (shape.len() <= 1 && n <= 16)
                    .then(|| vec![SymInt::Known(val); n.max(0) as usize]);
            }
            if node.op == "Where" {
                let (c, a, b) = (ints(0)?, ints(1)?, ints(2)?);
                let n = c.len().max(a.len()).max(b.len());
                let at = |v: &Vec<SymInt>, i: usize| {
                    if v.len() == 1 {
                        v[0].clone()
                    } else {
                        v.get(i).cloned().unwrap_or(SymInt::Unknown)
                    }
                };
                return Some(
                    (0..n)
                        .map(|i| match at(&c, i) {
                            SymInt::Known(0) => at(&b, i),
                            SymInt::Known(_) => at(&a, i),
                            _ => SymInt::Unknown,
                        })
                        .collect(),
                );
            }
            let (a, b) = (ints(0)?, ints(1)?);
            let n = a.len().max(b.len());
            if a.len() != n && a.len() != 1 || b.len() != n && b.len() != 1 {
                return None;
            }
            let at = |v: &Vec<SymInt>, i: usize| {
                if v.len() == 1 {
                    v[0].clone()
                } else {
                    v[i].clone()
                }
            };
            Some(
                (0..n)
                    .map(|i| match (node.op.as_str(), at(&a, i), at(&b, i)) {
                        ("Equal", x, y) if x == y && x != SymInt::Unknown => SymInt::Known(1),
                        ("Equal", SymInt::Known(x), SymInt::Known(y)) => {
                            SymInt::Known((x == y) as i64)
                        }
                        // A dimension symbol is never negative.
                        ("Equal", SymInt::Sym(_), SymInt::Known(y))
                        | ("Equal", SymInt::Known(y), SymInt::Sym(_))
                            if y < 0 =>
                        {
                            SymInt::Known(0)
                        }
                        ("Add", SymInt::Known(x), SymInt::Known(y)) => SymInt::Known(x + y),
                        ("Sub", SymInt::Known(x), SymInt::Known(y)) => SymInt::Known(x - y),
                        ("Mul", SymInt::Known(x), SymInt::Known(y)) => SymInt::Known(x * y),
                        ("Mul", x, SymInt::Known(1)) | ("Mul", SymInt::Known(1), x) => x,
                        ("Div", SymInt::Known(x), SymInt::Known(y)) if y != 0 => {
                            SymInt::Known(x / y)
                        }
                        ("Max", SymInt::Known(x), SymInt::Known(y)) => SymInt::Known(x.max(y)),
                        ("Min", SymInt::Known(x), SymInt::Known(y)) => SymInt::Known(x.min(y)),
                        _ => SymInt::Unknown,
                    })
                    .collect(),
            )
        }
        _ => None,
    }
}

/// Output shapes of a node from its operands' shapes (and symbolic values).
fn out_shapes(g: &Graph, sv: &SymValues, n: NodeId) -> Vec<Option<Vec<Dim>>> {
    let node = g.node(n);
    let s = |k: usize| shape_of(g, arg(node, k));
    let same = |k: usize| vec![s(k); node.outputs.len()];
    let ints = |k: usize| known_ints(g, sv, arg(node, k));
    let one = |x: Option<Vec<Dim>>| vec![x];
    match node.op.as_str() {
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Mod" | "Max" | "Min" | "Equal" | "Less"
        | "LessOrEqual" | "Greater" | "GreaterOrEqual" | "And" | "Or" | "Xor" | "Where" => {
            let shapes: Option<Vec<Vec<Dim>>> =
                node.inputs.iter().map(|v| shape_of(g, *v)).collect();
            one(shapes.map(|v| broadcast(&v.iter().collect::<Vec<_>>())))
        }
        "Shape" => {
            let r = s(0).map(|x| x.len() as i64);
            one(r.map(|r| {
                let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r);
                let (st, en) = (
                    clamp(node.int("start").unwrap_or(0)),
                    clamp(node.int("end").unwrap_or(r)),
                );
                vec![Dim::Fixed((en - st).max(0) as usize)]
            }))
        }
        "Gather" => one((|| {
            let (d, i) = (s(0)?, s(1)?);
            let ax = norm_axis(node.int("axis").unwrap_or(0), d.len())?;
            Some([&d[..ax], &i[..], &d[ax + 1..]].concat())
        })()),
        "Unsqueeze" => one((|| {
            let mut d = s(0)?;
            let axes = ints(1).or_else(|| node.ints("axes").map(|a| a.to_vec()))?;
            let r = d.len() + axes.len();
            let mut ax: Vec<usize> = axes
                .iter()
                .map(|&a| norm_axis(a, r))
                .collect::<Option<_>>()?;
            ax.sort();
            for a in ax {
                d.insert(a.min(d.len()), Dim::Fixed(1));
            }
            Some(d)
        })()),
        "Squeeze" => one((|| {
            let d = s(0)?;
            let axes = match ints(1).or_else(|| node.ints("axes").map(|a| a.to_vec())) {
                Some(a) => a
                    .iter()
                    .map(|&x| norm_axis(x, d.len()))
                    .collect::<Option<Vec<_>>>()?,
                None => (0..d.len()).filter(|&i| d[i] == Dim::Fixed(1)).collect(),
            };
            Some(
                d.iter()
                    .enumerate()
                    .filter(|(i, _)| !axes.contains(i))
                    .map(|(_, x)| x.clone())
                    .collect(),
            )
        })()),
        "Concat" => one((|| {
            let shapes: Vec<Vec<Dim>> = node
                .inputs
                .iter()
                .map(|v| shape_of(g, *v))
                .collect::<Option<_>>()?;
            let ax = norm_axis(node.int("axis")?, shapes.first()?.len())?;
            let mut out = shapes[0].clone();
            for sh in &shapes[1..] {
                out[ax] = add_dims(&out[ax], &sh[ax]);
            }
            Some(out)
        })()),
        "Reshape" => one((|| {
            let x = s(0)?;
            let spec = sym_of(g, sv, arg(node, 1))?;
            let allowzero = node.int("allowzero").unwrap_or(0) != 0;
            let mut out: Vec<Dim> = spec
                .iter()
                .enumerate()
                .map(|(i, e)| match e {
                    SymInt::Known(0) if !allowzero => x.get(i).cloned().unwrap_or(Dim::Unknown),
                    SymInt::Known(-1) => Dim::Unknown,
                    e => e.to_dim(),
                })
                .collect();
            // Infer the -1 entry: the element counts, as a constant times a
            // product of symbols, must agree; the symbols cancel.
            if let Some(p) = spec.iter().position(|e| *e == SymInt::Known(-1)) {
                let rest: Vec<Dim> = out
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != p)
                    .map(|(_, d)| d.clone())
                    .collect();
                if let (Some((total, mut sx)), Some((part, mut sr))) = (factors(&x), factors(&rest))
                {
                    sx.sort();
                    sr.sort();
                    if sx == sr && part > 0 && total % part == 0 {
                        out[p] = Dim::Fixed(total / part);
                    }
                }
            }
            Some(out)
        })()),
        "Transpose" => one((|| {
            let d = s(0)?;
            let perm: Vec<usize> = match node.ints("perm") {
                Some(p) => p
                    .iter()
                    .map(|&x| norm_axis(x, d.len()))
                    .collect::<Option<_>>()?,
                None => (0..d.len()).rev().collect(),
            };
            Some(perm.iter().map(|&p| d[p].clone()).collect())
        })()),
        "Expand" => one((|| {
            let d = s(0)?;
            let spec: Vec<Dim> = sym_of(g, sv, arg(node, 1))?
                .iter()
                .map(SymInt::to_dim)
                .collect();
            Some(broadcast(&[&d, &spec]))
        })()),
        "ConstantOfShape" => {
            one(sym_of(g, sv, arg(node, 0)).map(|v| v.iter().map(SymInt::to_dim).collect()))
        }
        "Range" => one((|| {
            let (st, lim, d) = (
                sym_of(g, sv, arg(node, 0))?,
                sym_of(g, sv, arg(node, 1))?,
                sym_of(g, sv, arg(node, 2))?,
            );
            Some(vec![match (st.first()?, lim.first()?, d.first()?) {
                (SymInt::Known(0), l, SymInt::Known(1)) => l.to_dim(),
                (SymInt::Known(a), SymInt::Known(b), SymInt::Known(c)) if *c != 0 => {
                    Dim::Fixed(((b - a) as f64 / *c as f64).ceil().max(0.0) as usize)
                }
                _ => Dim::Unknown,
            }])
        })()),
        "MatMul" => one((|| {
            let (a, b) = (s(0)?, s(1)?);
            if a.len() < 2 || b.len() < 2 {
                return None;
            }
            let mut out = broadcast(&[&a[..a.len() - 2].to_vec(), &b[..b.len() - 2].to_vec()]);
            out.push(a[a.len() - 2].clone());
            out.push(b[b.len() - 1].clone());
            Some(out)
        })()),
        "lpc.linear" => one((|| {
            let mut x = s(0)?;
            let w = g.constant(arg(node, 1)?)?;
            let n = if node.int("transposed") == Some(1) {
                w.dims[0]
            } else {
                w.dims[1]
            };
            *x.last_mut()? = Dim::Fixed(n);
            Some(x)
        })()),
        "Slice" => one((|| {
            let mut d = s(0)?;
            let (st, en) = (ints(1)?, ints(2)?);
            let axes = match arg(node, 3) {
                Some(_) => ints(3)?,
                None => (0..st.len() as i64).collect(),
            };
            let steps = match arg(node, 4) {
                Some(_) => ints(4)?,
                None => vec![1; st.len()],
            };
            for i in 0..st.len() {
                let ax = norm_axis(axes[i], d.len())?;
                d[ax] = match &d[ax] {
                    Dim::Fixed(n) => {
                        let n = *n as i64;
                        let c = |v: i64, lo: i64, hi: i64| {
                            (if v < 0 { v + n } else { v }).clamp(lo, hi)
                        };
                        let len = if steps[i] > 0 {
                            let (a, b) = (c(st[i], 0, n), c(en[i], 0, n));
                            ((b - a).max(0) + steps[i] - 1) / steps[i]
                        } else {
                            let (a, b) = (c(st[i], -1, n - 1), c(en[i], -1, n - 1));
                            ((a - b).max(0) + (-steps[i]) - 1) / (-steps[i])
                        };
                        Dim::Fixed(len as usize)
                    }
                    other if st[i] == 0 && en[i] >= i32::MAX as i64 && steps[i] == 1 => {
                        other.clone()
                    }
                    _ => Dim::Unknown,
                };
            }
            Some(d)
        })()),
        "Split" => {
            let Some(d) = s(0) else {
                return vec![None; node.outputs.len()];
            };
            let Some(ax) = norm_axis(node.int("axis").unwrap_or(0), d.len()) else {
                return vec![None; node.outputs.len()];
            };
            let sizes = ints(1).or_else(|| node.ints("split").map(|v| v.to_vec()));
            (0..node.outputs.len())
                .map(|k| {
                    let mut o = d.clone();
                    o[ax] = match (&sizes, &d[ax]) {
                        (Some(sz), _) => Dim::Fixed(*sz.get(k)? as usize),
                        (None, Dim::Fixed(n)) => {
                            let parts = node.outputs.len();
                            let chunk = n.div_ceil(parts);
                            Dim::Fixed(chunk.min(n.saturating_sub(k * chunk)))
                        }
                        _ => Dim::Unknown,
                    };
                    Some(o)
                })
                .collect()
        }
        "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceProd" => one((|| {
            let d = s(0)?;
            let keep = node.int("keepdims").unwrap_or(1) != 0;
            let axes: Vec<usize> = match ints(1).or_else(|| node.ints("axes").map(|a| a.to_vec())) {
                Some(a) if !a.is_empty() => a
                    .iter()
                    .map(|&x| norm_axis(x, d.len()))
                    .collect::<Option<_>>()?,
                _ => (0..d.len()).collect(),
            };
            Some(
                d.iter()
                    .enumerate()
                    .filter_map(|(i, x)| match (axes.contains(&i), keep) {
                        (true, true) => Some(Dim::Fixed(1)),
                        (true, false) => None,
                        _ => Some(x.clone()),
                    })
                    .collect(),
            )
        })()),
        "Flatten" => one((|| {
            let d = s(0)?;
            let ax = node.int("axis").unwrap_or(1);
            let ax = if ax < 0 { ax + d.len() as i64 } else { ax } as usize;
            let prod = |ds: &[Dim]| {
                ds.iter()
                    .map(|x| {
                        if let Dim::Fixed(n) = x {
                            Some(*n)
                        } else {
                            None
                        }
                    })
                    .product::<Option<usize>>()
            };
            let f = |ds: &[Dim]| prod(ds).map_or(Dim::Unknown, Dim::Fixed);
            Some(vec![f(&d[..ax.min(d.len())]), f(&d[ax.min(d.len())..])])
        })()),
        "Conv" => one((|| {
            let (x, w) = (s(0)?, s(1)?);
            let sp = x.len().checked_sub(2)?;
            let ints_or = |k: &str, d: usize, n: usize| {
                node.ints(k).map_or(vec![d as i64; n], |v| v.to_vec())
            };
            let (st, dl, pads) = (
                ints_or("strides", 1, sp),
                ints_or("dilations", 1, sp),
                ints_or("pads", 0, 2 * sp),
            );
            if node
                .string("auto_pad")
                .is_some_and(|p| p != "NOTSET" && p != "VALID")
            {
                return None;
            }
            let mut out = vec![x[0].clone(), w[0].clone()];
            for i in 0..sp {
                out.push(match (&x[i + 2], &w[i + 2]) {
                    (Dim::Fixed(n), Dim::Fixed(k)) => {
                        let span = dl[i] as usize * (k - 1) + 1;
                        let padded = n + (pads[i] + pads[i + sp]) as usize;
                        Dim::Fixed(padded.checked_sub(span)? / st[i] as usize + 1)
                    }
                    _ => Dim::Unknown,
                });
            }
            Some(out)
        })()),
        "Gemm" => one((|| {
            let (a, b) = (s(0)?, s(1)?);
            let m = if node.int("transA") == Some(1) {
                a.get(1)?
            } else {
                a.first()?
            };
            let n = if node.int("transB") == Some(1) {
                b.first()?
            } else {
                b.get(1)?
            };
            Some(vec![m.clone(), n.clone()])
        })()),
        "Attention" => {
            let (q, v) = (s(0), s(2));
            let y = (|| {
                let (q, v) = (q.clone()?, v?);
                if q.len() == 4 {
                    Some(vec![q[0].clone(), q[1].clone(), q[2].clone(), v[3].clone()])
                } else {
                    None
                }
            })();
            let mut out = vec![y];
            out.resize(node.outputs.len(), None);
            out
        }
        "com.microsoft.GroupQueryAttention" => {
            let mut out = vec![s(0)];
            out.resize(node.outputs.len(), None);
            out
        }
        "com.microsoft.SkipSimplifiedLayerNormalization" => {
            let x = s(0);
            (0..node.outputs.len())
                .map(|k| if k == 0 || k == 3 { x.clone() } else { None })
                .collect()
        }
        "LayerNormalization" | "RMSNormalization" | "SimplifiedLayerNormalization" => {
            let mut out = vec![s(0)];
            out.resize(node.outputs.len(), None);
            out
        }
        "Neg" | "Abs" | "Sqrt" | "Exp" | "Log" | "Sin" | "Cos" | "Tanh" | "Sigmoid" | "Erf"
        | "Relu" | "Reciprocal" | "Floor" | "Ceil" | "Softplus" | "Gelu" | "Identity" | "Cast"
        | "Not" | "Softmax" | "ScatterND" | "RotaryEmbedding" | "lpc.rms_norm" | "lpc.silu"
        | "lpc.gelu" => same(0),
        // One operand: gate and up are the halves of its last axis.
        "lpc.swiglu" if node.inputs.len() == 1 => one(s(0).and_then(|mut d| match d.last()? {
            Dim::Fixed(n) if n % 2 == 0 => {
                *d.last_mut()? = Dim::Fixed(n / 2);
                Some(d)
            }
            _ => None,
        })),
        "lpc.swiglu" => same(0),
        _ => vec![None; node.outputs.len()],
    }
}

/// Fills in missing shapes (keeping shapes the exporter wrote) and returns
/// the symbolic values of small integer tensors.
pub fn infer(g: &mut Graph) -> Result<(SymValues, bool), String> {
    let order = crate::util::topo(g)?;
    let mut sv = SymValues::new();
    let mut changed = false;
    for n in order {
        let shapes = out_shapes(g, &sv, n);
        let outs = g.node(n).outputs.clone();
        for (o, s) in outs.iter().zip(shapes) {
            let Some(s) = s else { continue };
            if let Some(ty) = &mut g.value_mut(*o).ty {
                let better = match &ty.shape {
                    None => true,
                    Some(old) => {
                        old.len() == s.len()
                            && old
                                .iter()
                                .zip(&s)
                                .any(|(a, b)| *a == Dim::Unknown && *b != Dim::Unknown)
                    }
                };
                if better {
                    ty.shape = Some(match &ty.shape {
                        Some(old) => old
                            .iter()
                            .zip(&s)
                            .map(|(a, b)| {
                                if *a == Dim::Unknown {
                                    b.clone()
                                } else {
                                    a.clone()
                                }
                            })
                            .collect(),
                        None => s,
                    });
                    changed = true;
                }
            }
        }
        let node = g.node(n);
        if let Some(v) = g
            .value(node.outputs[0])
            .ty
            .as_ref()
            .filter(|t| !t.dtype.is_float())
        {
            let _ = v;
            if let Some(vals) = sym_value(g, &sv, node) {
                sv.insert(node.outputs[0], vals);
            }
        }
    }
    // Constants carry their values too.
    for v in g.value_ids() {
        if let Def::Const(t) = &g.value(v).def {
            if t.dims.len() <= 1 && t.len() <= 16 {
                if let Some(vals) = t.to_i64_vec() {
                    sv.entry(v)
                        .or_insert_with(|| vals.into_iter().map(SymInt::Known).collect());
                }
            }
        }
    }
    Ok((sv, changed))
}
