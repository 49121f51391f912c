//! `fuse-activations`: SiLU, SwiGLU and GELU to lpc's ops.
//!
//! Matches: `Mul(x, Sigmoid(x))` (either order) -> `lpc.silu(x)`; then
//! `Mul(lpc.silu(g), u)` -> `lpc.swiglu(g, u)` when the SiLU has one reader;
//! the `Gelu` op -> `lpc.gelu {approximate}`.
//! Guarantees: the same function, computed as one op. Needs nothing before it.

use crate::util::{arg, def_op, other, replace_value, single_use};
use crate::Pass;
use lpc_ir::{Attr, Graph};
use std::collections::BTreeMap;

pub struct FuseActivations;

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
            let order = g
                .topo_order()
                .map_err(|n| format!("cycle at `{}`", g.node(n).name))?;
            for n in order {
                if !g.contains_node(n) {
                    continue;
                }
                let node = g.node(n).clone();
                match (pass, node.op.as_str()) {
                    (0, "Mul") => {
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
