//! The reference interpreter: executes any IR graph on the CPU, f32 for every
//! float type, with dynamic shapes bound at run time. Simple and obviously
//! correct first: it is the oracle that compiled code is checked against.
//!
//! Ops are registered in one table ([`kernel`]), one file per op family.

mod attention;
mod canonical;
mod elementwise;
mod linalg;
mod nn;
pub mod quant;
mod shape;
mod util;
mod value;

pub use attention::MASKED_AT_OR_BELOW;
pub use value::{Data, TensorValue};

use crate::{Def, Dim, Graph, Node, NodeId, ValueId};
use std::collections::HashMap;
use thiserror::Error;

#[derive(Debug, Error, PartialEq)]
pub enum InterpError {
    #[error("node `{node}` ({op}): {msg}")]
    Node {
        node: String,
        op: String,
        msg: String,
    },
    #[error("input `{name}`: {msg}")]
    Input { name: String, msg: String },
    #[error("{0}")]
    Graph(String),
}

/// What an op kernel sees: its node, its operands and the graph's opset.
#[derive(Debug)]
pub struct OpCtx<'a> {
    pub node: &'a Node,
    pub inputs: Vec<Option<&'a TensorValue>>,
    pub opset: i64,
}

type R<T> = Result<T, String>;

impl<'a> OpCtx<'a> {
    pub fn input(&self, k: usize) -> R<&'a TensorValue> {
        self.inputs
            .get(k)
            .copied()
            .flatten()
            .ok_or_else(|| format!("input {k} is required"))
    }
    pub fn opt(&self, k: usize) -> Option<&'a TensorValue> {
        self.inputs.get(k).copied().flatten()
    }
    pub fn int(&self, name: &str, default: i64) -> i64 {
        self.node.int(name).unwrap_or(default)
    }
    pub fn float(&self, name: &str, default: f32) -> f32 {
        self.node.float(name).unwrap_or(default)
    }
    pub fn f32_in(&self, k: usize) -> R<&'a [f32]> {
        self.input(k)?
            .as_f32()
            .ok_or_else(|| format!("input {k} must be a float tensor"))
    }
    /// An integer operand (shapes, axes, indices) as i64s.
    pub fn ints_in(&self, k: usize) -> R<Vec<i64>> {
        let v = self.input(k)?;
        match &v.data {
            Data::I(x) => Ok(x.clone()),
            _ => Err(format!("input {k} must be an integer tensor")),
        }
    }
}

pub type Kernel = fn(&OpCtx) -> R<Vec<TensorValue>>;

/// The op table: every op the interpreter executes.
pub fn kernel(op: &str) -> Option<Kernel> {
    use attention as at;
    use elementwise as ew;
    use linalg as la;
    use shape as sh;
    Some(match op {
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Mod" | "Max" | "Min" => ew::arith,
        "Equal" | "Less" | "LessOrEqual" | "Greater" | "GreaterOrEqual" => ew::compare,
        "And" | "Or" | "Xor" => ew::logic,
        "Not" => ew::not,
        "Where" => ew::where_,
        "Neg" | "Abs" | "Sqrt" | "Exp" | "Log" | "Sin" | "Cos" | "Tanh" | "Sigmoid" | "Erf"
        | "Relu" | "Reciprocal" | "Floor" | "Ceil" | "Softplus" | "Gelu" => ew::unary,
        "Identity" => ew::identity,
        "Cast" => ew::cast,
        "Shape" => sh::shape,
        "Reshape" => sh::reshape,
        "Flatten" => sh::flatten,
        "Transpose" => sh::transpose,
        "Squeeze" => sh::squeeze,
        "Unsqueeze" => sh::unsqueeze,
        "Concat" => sh::concat,
        "Split" => sh::split,
        "Slice" => sh::slice,
        "Gather" => sh::gather,
        "Expand" => sh::expand,
        "ConstantOfShape" => sh::constant_of_shape,
        "Range" => sh::range,
        "ScatterND" => sh::scatter_nd,
        "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceProd" => nn::reduce,
        "Softmax" => nn::softmax,
        "LayerNormalization" => nn::layer_norm,
        "RMSNormalization" | "SimplifiedLayerNormalization" => nn::rms_norm,
        "com.microsoft.SkipSimplifiedLayerNormalization" => nn::skip_rms_norm,
        "MatMul" => la::matmul,
        "Gemm" => la::gemm,
        "Conv" => la::conv,
        "RotaryEmbedding" => at::rotary_embedding,
        "Attention" => at::attention,
        "com.microsoft.GroupQueryAttention" => at::group_query_attention,
        "lpc.linear" => canonical::linear,
        "lpc.rope" => at::rotary_embedding,
        "lpc.attention" => at::lpc_attention,
        "lpc.layer_norm" => nn::layer_norm,
        "lpc.quantize" => quant::quantize,
        "lpc.dequantize" => quant::dequantize,
        "lpc.rotate" => quant::rotate,
        "lpc.qgemm" => quant::qgemm,
        "lpc.rms_norm" => nn::rms_norm,
        "lpc.silu" => canonical::silu,
        "lpc.swiglu" => canonical::swiglu,
        "lpc.gelu" => ew::unary,
        _ => return None,
    })
}

/// Binds the symbolic dimensions of the graph inputs and checks the values
/// against the declared types.
fn bind_inputs(
    g: &Graph,
    inputs: &HashMap<String, TensorValue>,
) -> Result<HashMap<String, usize>, InterpError> {
    let mut syms: HashMap<String, (usize, String)> = HashMap::new();
    for &i in &g.inputs {
        let val = g.value(i);
        let err = |msg: String| InterpError::Input {
            name: val.name.clone(),
            msg,
        };
        let v = inputs
            .get(&val.name)
            .ok_or_else(|| err("is missing".into()))?;
        let Some(ty) = &val.ty else { continue };
        if ty.dtype != v.dtype {
            return Err(err(format!(
                "expected element type {}, got {}",
                ty.dtype, v.dtype
            )));
        }
        let Some(shape) = &ty.shape else { continue };
        if shape.len() != v.shape.len() {
            return Err(err(format!(
                "expected rank {}, got shape {:?}",
                shape.len(),
                v.shape
            )));
        }
        for (k, (d, &n)) in shape.iter().zip(&v.shape).enumerate() {
            match d {
                Dim::Fixed(f) if *f != n => {
                    return Err(err(format!(
                        "dimension {k} must be {f}, got {n} (shape {:?})",
                        v.shape
                    )))
                }
                Dim::Sym(s) => match syms.get(s) {
                    Some((m, by)) if *m != n => {
                        return Err(err(format!(
                            "symbolic dimension `{s}` is {n} here but {m} in input `{by}`"
                        )))
                    }
                    Some(_) => {}
                    None => {
                        syms.insert(s.clone(), (n, val.name.clone()));
                    }
                },
                _ => {}
            }
        }
    }
    for name in inputs.keys() {
        if !g.inputs.iter().any(|&i| &g.value(i).name == name) {
            return Err(InterpError::Input {
                name: name.clone(),
                msg: "is not an input of the graph".into(),
            });
        }
    }
    Ok(syms.into_iter().map(|(k, (v, _))| (k, v)).collect())
}

/// Runs the graph on named inputs; returns the outputs in graph order.
pub fn run(
    g: &Graph,
    inputs: &HashMap<String, TensorValue>,
) -> Result<Vec<TensorValue>, InterpError> {
    run_impl(g, inputs, false).map(|(o, _)| o)
}

/// As [`run`], and also returns every node result (for per-layer reports).
pub fn run_capture(
    g: &Graph,
    inputs: &HashMap<String, TensorValue>,
) -> Result<(Vec<TensorValue>, HashMap<ValueId, TensorValue>), InterpError> {
    run_impl(g, inputs, true)
}

fn run_impl(
    g: &Graph,
    inputs: &HashMap<String, TensorValue>,
    keep_all: bool,
) -> Result<(Vec<TensorValue>, HashMap<ValueId, TensorValue>), InterpError> {
    bind_inputs(g, inputs)?;
    let (opset, order, mut remaining) = schedule(g)?;
    let mut env: HashMap<ValueId, TensorValue> = HashMap::new();
    for &i in &g.inputs {
        env.insert(i, inputs[&g.value(i).name].clone());
    }
    let mut consts: HashMap<ValueId, TensorValue> = HashMap::new();
    for &n in &order {
        let node = g.node(n);
        load_consts(g, node, &mut consts);
        let outs = exec(node, opset, &operands(g, node, &env, &consts)?)?;
        for v in node.inputs.iter().flatten() {
            if let Some(r) = remaining.get_mut(v) {
                *r -= 1;
                if *r == 0 && !g.outputs.contains(v) && !keep_all {
                    env.remove(v);
                }
            }
        }
        for (&o, val) in node.outputs.iter().zip(outs) {
            env.insert(o, val);
        }
    }
    let outs = outputs(g, &env)?;
    Ok((outs, if keep_all { env } else { HashMap::new() }))
}

/// The graph's opset, its nodes in order, and each value's reader count
/// (values are freed after their last use to keep peak memory down).
#[allow(clippy::type_complexity)]
fn schedule(g: &Graph) -> Result<(i64, Vec<NodeId>, HashMap<ValueId, usize>), InterpError> {
    let opset = g.opsets.get("").copied().unwrap_or(0);
    let order = g
        .topo_order()
        .map_err(|n| InterpError::Graph(format!("node `{}` is on a cycle", g.node(n).name)))?;
    let mut remaining: HashMap<ValueId, usize> = HashMap::new();
    for &n in &order {
        for v in g.node(n).inputs.iter().flatten() {
            *remaining.entry(*v).or_insert(0) += 1;
        }
    }
    Ok((opset, order, remaining))
}

/// The graph outputs from a run's values (or constants).
fn outputs(
    g: &Graph,
    env: &HashMap<ValueId, TensorValue>,
) -> Result<Vec<TensorValue>, InterpError> {
    g.outputs
        .iter()
        .map(|o| {
            env.get(o)
                .cloned()
                .or_else(|| g.constant(*o).map(TensorValue::from_tensor))
                .ok_or_else(|| {
                    InterpError::Graph(format!("output `{}` was not computed", g.value(*o).name))
                })
        })
        .collect()
}

/// The node's constant operands, converted once per run.
fn load_consts(g: &Graph, node: &Node, consts: &mut HashMap<ValueId, TensorValue>) {
    for v in node.inputs.iter().flatten() {
        if let Def::Const(t) = &g.value(*v).def {
            consts
                .entry(*v)
                .or_insert_with(|| TensorValue::from_tensor(t));
        }
    }
}

/// The message of a caught panic.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> &str {
    p.downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| p.downcast_ref::<&str>().copied())
        .unwrap_or("panic")
}

fn node_error(node: &Node, msg: String) -> InterpError {
    InterpError::Node {
        node: node.name.clone(),
        op: node.op.clone(),
        msg,
    }
}

/// A node's operands, from the run's values or the constants.
fn operands<'a>(
    g: &Graph,
    node: &Node,
    env: &'a HashMap<ValueId, TensorValue>,
    consts: &'a HashMap<ValueId, TensorValue>,
) -> Result<Vec<Option<&'a TensorValue>>, InterpError> {
    node.inputs
        .iter()
        .map(|v| {
            v.map(|v| {
                env.get(&v).or_else(|| consts.get(&v)).ok_or_else(|| {
                    node_error(node, format!("operand `{}` has no value", g.value(v).name))
                })
            })
            .transpose()
        })
        .collect()
}

/// Runs one node's kernel on its operands.
fn exec(
    node: &Node,
    opset: i64,
    ins: &[Option<&TensorValue>],
) -> Result<Vec<TensorValue>, InterpError> {
    let err = |msg: String| node_error(node, msg);
    let k = kernel(&node.op).ok_or_else(|| err("op is not supported by the interpreter".into()))?;
    let ctx = OpCtx {
        node,
        inputs: ins.to_vec(),
        opset,
    };
    // A kernel that panics on input it failed to validate is a bug; it still
    // reaches the user as an error naming the node.
    let outs = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| k(&ctx))) {
        Ok(r) => r.map_err(err)?,
        Err(p) => {
            let what = panic_message(p.as_ref());
            return Err(err(format!("internal error in the interpreter: {what}")));
        }
    };
    if outs.len() < node.outputs.len() {
        return Err(err(format!(
            "produced {} outputs, the node has {}",
            outs.len(),
            node.outputs.len()
        )));
    }
    Ok(outs)
}

/// What a [`run_lockstep`] hook sees before a node runs: the node and, per
/// input set, its operands.
#[derive(Debug)]
pub struct Step<'a> {
    pub node: NodeId,
    pub operands: &'a [Vec<Option<&'a TensorValue>>],
}

/// Runs several input sets through the graph together, node by node in
/// topological order, and returns each set's outputs. Before each node,
/// `hook` may replace constant operands of the node (`(operand index,
/// value)`, for every set and for every later reader of that constant):
/// calibration uses it to quantize a layer from the inputs that reached it
/// through the already-quantized layers before it, in one pass. Values and
/// constants are dropped after their last use, so the memory held is the
/// live activations of all sets plus the constants in use.
pub fn run_lockstep<F>(
    g: &Graph,
    inputs: &[HashMap<String, TensorValue>],
    mut hook: F,
) -> Result<Vec<Vec<TensorValue>>, InterpError>
where
    F: FnMut(&Step) -> Result<Vec<(usize, TensorValue)>, String>,
{
    for i in inputs {
        bind_inputs(g, i)?;
    }
    let (opset, order, mut remaining) = schedule(g)?;
    let mut envs: Vec<HashMap<ValueId, TensorValue>> = inputs
        .iter()
        .map(|s| {
            g.inputs
                .iter()
                .map(|&i| (i, s[&g.value(i).name].clone()))
                .collect()
        })
        .collect();
    let mut consts: HashMap<ValueId, TensorValue> = HashMap::new();
    for &n in &order {
        let node = g.node(n);
        load_consts(g, node, &mut consts);
        let replace = {
            let ops = envs
                .iter()
                .map(|env| operands(g, node, env, &consts))
                .collect::<Result<Vec<_>, _>>()?;
            hook(&Step {
                node: n,
                operands: &ops,
            })
            .map_err(|m| node_error(node, m))?
        };
        for (i, val) in replace {
            let v = node
                .inputs
                .get(i)
                .copied()
                .flatten()
                .filter(|v| consts.contains_key(v));
            let v = v.ok_or_else(|| {
                node_error(node, format!("operand {i} is not a constant to replace"))
            })?;
            consts.insert(v, val);
        }
        for env in envs.iter_mut() {
            let outs = exec(node, opset, &operands(g, node, env, &consts)?)?;
            for (&o, val) in node.outputs.iter().zip(outs) {
                env.insert(o, val);
            }
        }
        for v in node.inputs.iter().flatten() {
            if let Some(r) = remaining.get_mut(v) {
                *r -= 1;
                if *r == 0 && !g.outputs.contains(v) {
                    consts.remove(v);
                    for env in envs.iter_mut() {
                        env.remove(v);
                    }
                }
            }
        }
    }
    envs.iter().map(|env| outputs(g, env)).collect()
}
