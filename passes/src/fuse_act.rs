//! `fuse-activations`: SiLU, SwiGLU and GELU to lpc's ops.
//!
//! Matches: `Mul(x, Sigmoid(x))` (either order) -> `lpc.silu(x)`; then
//! `Mul(lpc.silu(g), u)` -> `lpc.swiglu(g, u)` when the SiLU has one reader;
//! the `Gelu` op -> `lpc.gelu {approximate}`; the tanh-GELU chain
//! `0.5 · x · (1 + tanh(√(2/π) · (x + 0.044715 · x³)))` as TorchScript writes
//! it (x³ as `x · (x · x)`, constants on either side) -> `lpc.gelu {tanh}`;
//! the erf-GELU chain `0.5 · x · (1 + erf(x / √2))` -> `lpc.gelu {none}`.
//! Guarantees: the same function, computed as one op. Needs nothing before it.
//!
//! `fuse-swiglu-split`: `lpc.swiglu(Split(x)[i], Split(x)[j])` where the
//! Split cuts the last axis of `x` into two equal halves read by nothing
//! else (`fuse-parallel-linear`'s gate and up projections) ->
//! `lpc.swiglu(x) {gate = i}`: the halves are read in place instead of
//! copied out first. Guarantees: the same values. Needs
//! `fuse-parallel-linear` (and `fuse-activations`) and `dce` before it (the
//! SiLU a SwiGLU replaced still reads the gate until then), `dce` after.

use crate::util::{arg, def, def_op, other, replace_value, scalar, single_use};
use crate::Pass;
use lpc_ir::{Attr, Dim, Graph};
use std::collections::BTreeMap;

pub struct FuseActivations;

/// For `Mul(c, y)` / `Mul(y, c)` with scalar constant c ≈ `want`: y.
fn times(g: &Graph, v: lpc_ir::ValueId, op: &str, want: f64) -> Option<lpc_ir::ValueId> {
    let (_, n) = def_op(g, v, op)?;
    let (a, b) = (arg(n, 0)?, arg(n, 1)?);
    let close = |c: f64| (c - want).abs() <= 1e-6 * want.abs().max(1.0);
    match (scalar(g, a), scalar(g, b)) {
        (Some(c), _) if close(c) => Some(b),
        (_, Some(c)) if close(c) => Some(a),
        _ => None,
    }
}

/// The erf-GELU chain ending at `v`: `0.5 · (x · (1 + erf(x / √2)))` or
/// `(x · 0.5) · (1 + erf(x / √2))`, constants on either side: returns x.
fn match_erf_gelu(g: &Graph, v: lpc_ir::ValueId) -> Option<lpc_ir::ValueId> {
    let erf_of = |onep: lpc_ir::ValueId| -> Option<lpc_ir::ValueId> {
        let e = times(g, onep, "Add", 1.0)?;
        let (_, erf) = def_op(g, e, "Erf")?;
        let arg0 = arg(erf, 0)?;
        times(g, arg0, "Div", std::f64::consts::SQRT_2)
            .or_else(|| times(g, arg0, "Mul", std::f64::consts::FRAC_1_SQRT_2))
    };
    // 0.5 * (x * (1 + erf))
    if let Some(inner) = times(g, v, "Mul", 0.5) {
        let (_, m) = def_op(g, inner, "Mul")?;
        for (x, onep) in [(arg(m, 0)?, arg(m, 1)?), (arg(m, 1)?, arg(m, 0)?)] {
            if erf_of(onep) == Some(x) {
                return Some(x);
            }
        }
    }
    // (x * 0.5) * (1 + erf)
    let (_, m) = def_op(g, v, "Mul")?;
    for (half, onep) in [(arg(m, 0)?, arg(m, 1)?), (arg(m, 1)?, arg(m, 0)?)] {
        if let (Some(x), Some(y)) = (times(g, half, "Mul", 0.5), erf_of(onep)) {
            if x == y {
                return Some(x);
            }
        }
    }
    None
}

/// The tanh-GELU chain ending at `v`: returns x.
fn match_tanh_gelu(g: &Graph, v: lpc_ir::ValueId) -> Option<lpc_ir::ValueId> {
    // 0.5 * (x * (1 + tanh(k * (x + 0.044715 * x^3))))
    let inner = times(g, v, "Mul", 0.5)?;
    let (_, m) = def_op(g, inner, "Mul")?;
    for (x, onep) in [(arg(m, 0)?, arg(m, 1)?), (arg(m, 1)?, arg(m, 0)?)] {
        let Some(th) = times(g, onep, "Add", 1.0) else {
            continue;
        };
        let Some((_, t)) = def_op(g, th, "Tanh") else {
            continue;
        };
        let Some(u) = times(g, arg(t, 0)?, "Mul", (2.0 / std::f64::consts::PI).sqrt()) else {
            continue;
        };
        let Some((_, add)) = def_op(g, u, "Add") else {
            continue;
        };
        let Some(cube_c) = other(add, x) else {
            continue;
        };
        let Some(cube) = times(g, cube_c, "Mul", 0.044715) else {
            continue;
        };
        let Some((_, c1)) = def_op(g, cube, "Mul") else {
            continue;
        };
        let Some(sq) = other(c1, x) else { continue };
        let is_sq = def_op(g, sq, "Mul")
            .is_some_and(|(_, s)| arg(s, 0) == Some(x) && arg(s, 1) == Some(x))
            || def_op(g, sq, "Pow").is_some_and(|(_, s)| {
                arg(s, 0) == Some(x) && arg(s, 1).and_then(|e| scalar(g, e)) == Some(2.0)
            });
        if is_sq {
            return Some(x);
        }
    }
    None
}

impl Pass for FuseActivations {
    fn name(&self) -> &'static str {
        "fuse-activations"
    }
    fn summary(&self) -> &'static str {
        "x*sigmoid(x) to lpc.silu, silu(g)*u to lpc.swiglu, Gelu to lpc.gelu"
    }
    fn run(&self, g: &mut Graph) -> Result<bool, String> {
        let mut changed = false;
        for pass in 0..2 {
            let order = crate::util::topo(g)?;
            for n in order {
                if !g.contains_node(n) {
                    continue;
                }
                let node = g.node(n).clone();
                match (pass, node.op.as_str()) {
                    (0, "Mul") => {
                        let gelu = match_tanh_gelu(g, node.outputs[0])
                            .map(|x| (x, "tanh"))
                            .or_else(|| match_erf_gelu(g, node.outputs[0]).map(|x| (x, "none")));
                        if let Some((x, form)) = gelu {
                            let mut attrs = BTreeMap::new();
                            attrs.insert("approximate".into(), Attr::String(form.into()));
                            replace_value(
                                g,
                                node.outputs[0],
                                node.name,
                                "lpc.gelu",
                                attrs,
                                vec![Some(x)],
                            );
                            changed = true;
                            continue;
                        }
                        let (a, b) = match (arg(&node, 0), arg(&node, 1)) {
                            (Some(a), Some(b)) => (a, b),
                            _ => continue,
                        };
                        let sig_of = |s, x| {
                            def_op(g, s, "Sigmoid").is_some_and(|(_, sn)| arg(sn, 0) == Some(x))
                                && single_use(g, s)
                        };
                        let x = if sig_of(b, a) {
                            a
                        } else if sig_of(a, b) {
                            b
                        } else {
                            continue;
                        };
                        replace_value(
                            g,
                            node.outputs[0],
                            node.name,
                            "lpc.silu",
                            BTreeMap::new(),
                            vec![Some(x)],
                        );
                        changed = true;
                    }
                    (0, "Gelu") => {
                        let mut attrs = BTreeMap::new();
                        let approx = node.string("approximate").unwrap_or("none").to_string();
                        attrs.insert("approximate".into(), Attr::String(approx));
                        replace_value(
                            g,
                            node.outputs[0],
                            node.name,
                            "lpc.gelu",
                            attrs,
                            node.inputs.clone(),
                        );
                        changed = true;
                    }
                    (1, "Mul") => {
                        let Some(s) = node
                            .inputs
                            .iter()
                            .flatten()
                            .copied()
                            .find(|&v| def_op(g, v, "lpc.silu").is_some() && single_use(g, v))
                        else {
                            continue;
                        };
                        let (Some(u), Some((_, silu))) =
                            (other(&node, s), def_op(g, s, "lpc.silu"))
                        else {
                            continue;
                        };
                        let gate = arg(silu, 0);
                        replace_value(
                            g,
                            node.outputs[0],
                            node.name,
                            "lpc.swiglu",
                            BTreeMap::new(),
                            vec![gate, Some(u)],
                        );
                        changed = true;
                    }
                    _ => {}
                }
            }
        }
        Ok(changed)
    }
}

pub struct FuseSwigluSplit;

impl Pass for FuseSwigluSplit {
    fn name(&self) -> &'static str {
        "fuse-swiglu-split"
    }
    fn summary(&self) -> &'static str {
        "lpc.swiglu of a Split's two halves to lpc.swiglu of the whole"
    }
    fn run(&self, g: &mut Graph) -> Result<bool, String> {
        let mut changed = false;
        for n in crate::util::nodes_of(g, "lpc.swiglu") {
            let node = g.node(n).clone();
            let (Some(gv), Some(uv), 2) = (arg(&node, 0), arg(&node, 1), node.inputs.len()) else {
                continue;
            };
            let (Some((sid, split)), Some((sid2, _))) = (def(g, gv), def(g, uv)) else {
                continue;
            };
            if sid != sid2 || split.op != "Split" || split.outputs.len() != 2 {
                continue;
            }
            let Some(x) = arg(split, 0) else {
                continue;
            };
            let Some(dims) = g.value(x).ty.as_ref().and_then(|t| t.shape.clone()) else {
                continue;
            };
            let rank = dims.len() as i64;
            let axis = split.int("axis").unwrap_or(0);
            let Some(Dim::Fixed(d)) = dims.last() else {
                continue;
            };
            let halves = match split.inputs.get(1).copied().flatten() {
                Some(s) => {
                    g.constant(s).and_then(|t| t.to_i64_vec()) == Some(vec![*d as i64 / 2; 2])
                }
                None => split
                    .ints("split")
                    .map_or(split.int("num_outputs").unwrap_or(2) == 2, |v| {
                        v == [*d as i64 / 2; 2]
                    }),
            };
            let last = axis == -1 || axis == rank - 1;
            let both_once = split.outputs.iter().all(|&o| single_use(g, o));
            if !halves || !last || d % 2 != 0 || !both_once || gv == uv {
                continue;
            }
            let gate = if split.outputs[0] == gv { 0 } else { 1 };
            let mut attrs = BTreeMap::new();
            attrs.insert("gate".to_string(), Attr::Int(gate));
            replace_value(
                g,
                node.outputs[0],
                node.name.clone(),
                "lpc.swiglu",
                attrs,
                vec![Some(x)],
            );
            changed = true;
        }
        Ok(changed)
    }
}
