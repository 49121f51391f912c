//! `cse`: common-subexpression elimination.
//!
//! Matches: nodes with the same op, attributes and operands, and small
//! constants (at most 16 elements) with the same type and bytes.
//! Guarantees: each such computation appears once; readers of the duplicates
//! read the first. Run `dce` after it to drop the duplicates.

use crate::Pass;
use lpc_ir::{Graph, ValueId};
use std::collections::HashMap;

pub struct Cse;

impl Pass for Cse {
    fn name(&self) -> &'static str {
        "cse"
    }
    fn summary(&self) -> &'static str {
        "merge identical nodes and identical small constants"
    }
    fn run(&self, g: &mut Graph) -> Result<bool, String> {
        let mut changed = false;
        // Constants first, so that nodes over equal constants become equal.
        let mut seen_c: HashMap<(String, Vec<usize>, Vec<u8>), ValueId> = HashMap::new();
        let consts: Vec<ValueId> = g
            .value_ids()
            .filter(|&v| g.constant(v).is_some_and(|t| t.len() <= 16))
            .collect();
        for v in consts {
            let t = g.constant(v).expect("constant");
            let key = (t.dtype.to_string(), t.dims.clone(), t.data.to_vec());
            match seen_c.get(&key) {
                Some(&first) if first != v && !g.consumers(v).is_empty() => {
                    for (n, k) in g.consumers(v) {
                        g.set_input(n, k, Some(first));
                    }
                    changed = true;
                }
                Some(_) => {}
                None => {
                    seen_c.insert(key, v);
                }
            }
        }
        let order = crate::util::topo(g)?;
        let mut seen: HashMap<String, Vec<ValueId>> = HashMap::new();
        for n in order {
            let node = g.node(n);
            let key = format!(
                "{}|{:?}|{:?}|{}",
                node.op,
                node.attrs,
                node.inputs,
                node.outputs.len()
            );
            match seen.get(&key) {
                Some(first) => {
                    let (first, outs) = (first.clone(), node.outputs.clone());
                    for (o, f) in outs.into_iter().zip(first) {
                        if !g.outputs.contains(&o) {
                            g.replace_uses(o, f);
                            changed = true;
                        }
                    }
                }
                None => {
                    seen.insert(key, node.outputs.clone());
                }
            }
        }
        Ok(changed)
    }
}
