//! Which `lpc.linear` layers get quantized, and to what.
//!
//! Default policy (what users of quantization tools ask for): every linear
//! layer except
//! - the output head: a linear whose result reaches a graph output through
//!   shape-only ops (an LLM's `lm_head`, a DiT's final projection);
//! - conditioning layers: a linear that does not depend on the first graph
//!   input (the tokens or latents) and whose result reaches attention only
//!   through another linear (Wan2.1's time and text embedders, the adaLN /
//!   modulation projection).
//!
//! `exclude` regexes (matched against the node name and its weights' names)
//! replace the defaults when given, even empty; `overrides` set a format per
//! layer and beat both; `quantize_all` drops the defaults. The layers left
//! unquantized compute in bf16 (`bf16-linear`) when `unquantized_bf16`.

use lpc_ir::{Graph, NodeId, ValueId};
use lpc_runtime::formats::Format;
use regex::Regex;
use std::collections::{HashMap, HashSet};

/// A quantization scheme and the selection options.
#[derive(Debug, Clone, Default)]
pub struct QuantConfig {
    /// Weight format; `None` quantizes nothing.
    pub weights: Option<Format>,
    /// Activation format (`None`: weight-only).
    pub activations: Option<Format>,
    /// Block Hadamard rotation before quantization.
    pub rotate: bool,
    /// Power-of-two row scales for HiF8 weights (per output channel) and
    /// activations (per token): `--hif8-scale pow2`.
    pub hif8_scale: bool,
    /// Scale search for 4-bit weights: `--scale-search`.
    pub scale_search: bool,
    /// Activation-aware scale search: the search's squared errors weighted
    /// by each input channel's mean square activation, from calibration
    /// runs (`None`: plain squared error of the weights).
    pub search_calibration: Option<SearchCalibration>,
    /// GPTQ error compensation: per-layer Hessians from calibration runs.
    pub gptq: Option<Gptq>,
    /// SmoothQuant migration (`--smooth ALPHA`) with calibration maxima.
    pub smooth: Option<crate::smooth::SmoothConfig>,
    /// `None`: the default exclusions; `Some(list)`: exactly these.
    pub exclude: Option<Vec<Regex>>,
    /// `REGEX=FORMAT` (`none` excludes); the first match wins.
    pub overrides: Vec<(Regex, Option<Format>)>,
    pub quantize_all: bool,
    /// The linear layers left unquantized in bf16 (`bf16-linear`), not f32:
    /// `--unquantized bf16`.
    pub unquantized_bf16: bool,
}

/// What the activation-aware scale search weighs each weight's error by.
#[derive(Debug, Clone, Default)]
pub struct SearchCalibration {
    /// Per input channel mean square of the layer's input, as the packed
    /// weight sees it (after smoothing and rotation), keyed by the weight's
    /// `lpc.quantize` node name (`{layer}/w{i}/quantize`).
    pub importance: std::sync::Arc<HashMap<String, Vec<f32>>>,
    /// Calibration samples to generate, and their seed.
    pub samples: usize,
    pub seed: u64,
}

/// GPTQ: the weights calibration packed (keyed by the weight's
/// `lpc.quantize` node name, `{layer}/w{i}/quantize`); the others get
/// round-to-nearest.
#[derive(Debug, Clone, Default)]
pub struct Gptq {
    pub packed: std::sync::Arc<GptqWeights>,
    pub options: crate::gptq::Options,
    /// Calibration samples to generate, and their seed.
    pub samples: usize,
    pub seed: u64,
}

/// Packed weights from GPTQ calibration, by `lpc.quantize` node name.
#[derive(Clone, Default, PartialEq)]
pub struct GptqWeights(pub HashMap<String, Vec<u8>>);

impl std::fmt::Debug for GptqWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GptqWeights({} tensors)", self.0.len())
    }
}

impl Gptq {
    /// Did calibration pack (some of) this layer's weights?
    pub fn covers(&self, layer: &str) -> bool {
        self.packed
            .0
            .keys()
            .any(|k| k.strip_prefix(layer).is_some_and(|r| r.starts_with("/w")))
    }
}

/// The decision for one layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerPlan {
    pub node: NodeId,
    pub name: String,
    /// `(weights, activations)`, or `None` when the layer stays f32.
    pub formats: Option<(Format, Option<Format>)>,
    pub reason: &'static str,
}

/// The plan for a graph, with warnings (e.g. an override that names no layer).
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub layers: Vec<LayerPlan>,
    pub warnings: Vec<String>,
}

const SHAPE_ONLY: &[&str] = &[
    "Reshape",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Cast",
    "Identity",
    "Flatten",
    "Split",
    "Slice",
];

/// Linears whose result reaches a graph output through shape-only ops.
fn heads(g: &Graph) -> HashSet<NodeId> {
    let mut out = HashSet::new();
    let mut stack: Vec<ValueId> = g.outputs.clone();
    let mut seen = HashSet::new();
    while let Some(v) = stack.pop() {
        if !seen.insert(v) {
            continue;
        }
        let Some(n) = g.producer(v) else { continue };
        let node = g.node(n);
        if node.op == "lpc.linear" {
            out.insert(n);
        } else if SHAPE_ONLY.contains(&node.op.as_str()) {
            stack.extend(node.inputs.first().copied().flatten());
        }
    }
    out
}

/// Values that depend on `root`.
fn depends_on(g: &Graph, root: ValueId) -> HashSet<ValueId> {
    let mut dep: HashSet<ValueId> = [root].into();
    for n in g.topo_order().unwrap_or_default() {
        let node = g.node(n);
        if node.inputs.iter().flatten().any(|v| dep.contains(v)) {
            dep.extend(node.outputs.iter().copied());
        }
    }
    dep
}

/// Does `v` reach an `lpc.attention` operand without passing a linear?
fn feeds_attention(g: &Graph, v: ValueId) -> bool {
    let mut stack = vec![v];
    let mut seen = HashSet::new();
    while let Some(v) = stack.pop() {
        if !seen.insert(v) {
            continue;
        }
        for (n, _) in g.consumers(v) {
            let node = g.node(n);
            match node.op.as_str() {
                "lpc.attention" => return true,
                "lpc.linear" => {}
                _ => stack.extend(node.outputs.iter().copied()),
            }
        }
    }
    false
}

/// The names a layer answers to: its node name and its weights' names.
pub fn layer_names(g: &Graph, n: NodeId) -> Vec<String> {
    let node = g.node(n);
    let parts = node.int("parts").unwrap_or(1).max(1) as usize;
    let mut names = vec![node.name.clone()];
    for &w in node.inputs.iter().skip(1).take(parts).flatten() {
        // Look through the compile-time rotation of the weight.
        let w = g
            .producer(w)
            .filter(|&p| g.node(p).op == "lpc.rotate")
            .and_then(|p| g.node(p).inputs[0])
            .unwrap_or(w);
        names.push(g.value(w).name.clone());
    }
    names
}

pub fn plan(g: &Graph, cfg: &QuantConfig) -> Plan {
    let mut plan = Plan::default();
    let Some(wf) = cfg.weights else {
        return plan;
    };
    let order = g.topo_order().unwrap_or_default();
    let linears: Vec<NodeId> = order
        .into_iter()
        .filter(|&n| g.node(n).op == "lpc.linear")
        .collect();
    let heads = heads(g);
    let main = g
        .inputs
        .first()
        .map(|&i| depends_on(g, i))
        .unwrap_or_default();
    let mut override_hits: HashMap<usize, usize> = HashMap::new();
    for n in linears {
        let names = layer_names(g, n);
        let hit = |r: &Regex| names.iter().any(|s| r.is_match(s));
        let default_fmt = Some((wf, cfg.activations));
        let (formats, reason) = if let Some((i, (_, f))) =
            cfg.overrides.iter().enumerate().find(|(_, (r, _))| hit(r))
        {
            *override_hits.entry(i).or_default() += 1;
            (f.map(|f| (f, cfg.activations.map(|_| f))), "override")
        } else if let Some(ex) = &cfg.exclude {
            if ex.iter().any(hit) {
                (None, "excluded")
            } else {
                (default_fmt, "selected")
            }
        } else if cfg.quantize_all {
            (default_fmt, "selected (--quantize-all)")
        } else if heads.contains(&n) {
            (None, "default: output head")
        } else if !g.node(n).inputs[0].is_some_and(|x| main.contains(&x))
            && !feeds_attention(g, g.node(n).outputs[0])
        {
            (None, "default: conditioning layer")
        } else {
            (default_fmt, "selected")
        };
        plan.layers.push(LayerPlan {
            node: n,
            name: g.node(n).name.clone(),
            formats,
            reason,
        });
    }
    for (i, (r, _)) in cfg.overrides.iter().enumerate() {
        if !override_hits.contains_key(&i) {
            plan.warnings.push(format!(
                "--override {}: no linear layer matches",
                r.as_str()
            ));
        }
    }
    plan
}
