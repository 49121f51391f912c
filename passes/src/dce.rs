//! `dce`: dead-code elimination.
//!
//! Matches: nodes none of whose outputs is read by a node or a graph output.
//! Guarantees: every remaining node contributes to an output. Runs anywhere.

use crate::Pass;
use lpc_ir::Graph;
use std::collections::HashSet;

pub struct Dce;

impl Pass for Dce {
    fn name(&self) -> &'static str {
        "dce"
    }
    fn summary(&self) -> &'static str {
        "remove nodes whose results are never used"
    }
    fn run(&self, g: &mut Graph) -> Result<bool, String> {
        let order = crate::util::topo(g)?;
        let mut live: HashSet<_> = g.outputs.iter().copied().collect();
        let mut dead = Vec::new();
        for &n in order.iter().rev() {
            let node = g.node(n);
            if node.outputs.iter().any(|o| live.contains(o)) {
                live.extend(node.inputs.iter().flatten().copied());
            } else {
                dead.push(n);
            }
        }
        for &n in &dead {
            g.remove_node(n);
        }
        Ok(!dead.is_empty())
    }
}
