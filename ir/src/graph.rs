//! The graph: values (graph inputs, constants, node results) with their types,
//! and nodes on a petgraph `StableDiGraph` whose edges run from producer to
//! consumer. The node's `inputs` list is the truth; the edges mirror it and
//! are kept in sync by every mutating method here.

use crate::{DType, Tensor};
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt;

/// A value: index into the graph's value table. Never reused.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ValueId(pub u32);

pub type NodeId = NodeIndex;

/// One dimension: a constant, a named symbol bound at run time, or unknown.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Dim {
    Fixed(usize),
    Sym(String),
    Unknown,
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Sym(s) => f.write_str(s),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

/// A value's type: element type and, if known, its shape (rank and dims).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Type {
    pub dtype: DType,
    pub shape: Option<Vec<Dim>>,
}

impl Type {
    pub fn new(dtype: DType, shape: Vec<Dim>) -> Self {
        Self {
            dtype,
            shape: Some(shape),
        }
    }
    pub fn fixed(dtype: DType, dims: &[usize]) -> Self {
        Self::new(dtype, dims.iter().map(|&d| Dim::Fixed(d)).collect())
    }
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.dtype)?;
        if let Some(s) = &self.shape {
            let dims: Vec<String> = s.iter().map(|d| d.to_string()).collect();
            write!(f, "[{}]", dims.join(", "))?;
        }
        Ok(())
    }
}

/// Where a value comes from.
#[derive(Clone, PartialEq, Debug)]
pub enum Def {
    Input,
    Const(Tensor),
    /// Output `usize` of a node.
    Node(NodeId, usize),
}

#[derive(Clone, PartialEq, Debug)]
pub struct Value {
    /// The ONNX name (unique within the graph).
    pub name: String,
    pub ty: Option<Type>,
    pub def: Def,
}

/// A node attribute, kept as ONNX wrote it.
#[derive(Clone, PartialEq, Debug)]
pub enum Attr {
    Int(i64),
    Float(f32),
    String(String),
    Tensor(Tensor),
    Ints(Vec<i64>),
    Floats(Vec<f32>),
    Strings(Vec<String>),
}

/// An operation. `op` is the ONNX op type, prefixed with its domain for
/// domains other than ai.onnx (`com.microsoft.GroupQueryAttention`); lpc's
/// canonical ops use the `lpc.` prefix.
#[derive(Clone, PartialEq, Debug)]
pub struct Node {
    pub name: String,
    pub op: String,
    pub attrs: BTreeMap<String, Attr>,
    /// `None` is an omitted optional input.
    pub inputs: Vec<Option<ValueId>>,
    pub outputs: Vec<ValueId>,
}

impl Node {
    pub fn attr(&self, name: &str) -> Option<&Attr> {
        self.attrs.get(name)
    }
    pub fn int(&self, name: &str) -> Option<i64> {
        match self.attrs.get(name)? {
            Attr::Int(i) => Some(*i),
            _ => None,
        }
    }
    pub fn float(&self, name: &str) -> Option<f32> {
        match self.attrs.get(name)? {
            Attr::Float(f) => Some(*f),
            _ => None,
        }
    }
    pub fn ints(&self, name: &str) -> Option<&[i64]> {
        match self.attrs.get(name)? {
            Attr::Ints(v) => Some(v),
            _ => None,
        }
    }
    pub fn string(&self, name: &str) -> Option<&str> {
        match self.attrs.get(name)? {
            Attr::String(s) => Some(s),
            _ => None,
        }
    }
}

/// A node to add: the graph creates its output values.
#[derive(Clone, Debug)]
pub struct NewNode {
    pub name: String,
    pub op: String,
    pub attrs: BTreeMap<String, Attr>,
    pub inputs: Vec<Option<ValueId>>,
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub name: String,
    /// Opset version per domain (`""` is ai.onnx).
    pub opsets: BTreeMap<String, i64>,
    values: Vec<Value>,
    g: StableDiGraph<Node, ValueId>,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
}

impl Graph {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    fn push_value(&mut self, v: Value) -> ValueId {
        let id = ValueId(self.values.len() as u32);
        self.values.push(v);
        id
    }

    pub fn add_input(&mut self, name: impl Into<String>, ty: Option<Type>) -> ValueId {
        let id = self.push_value(Value {
            name: name.into(),
            ty,
            def: Def::Input,
        });
        self.inputs.push(id);
        id
    }

    pub fn add_const(&mut self, name: impl Into<String>, t: Tensor) -> ValueId {
        let ty = Type::fixed(t.dtype, &t.dims);
        self.push_value(Value {
            name: name.into(),
            ty: Some(ty),
            def: Def::Const(t),
        })
    }

    /// Adds a node with one new value per `(name, type)` in `outputs`.
    pub fn add_node(
        &mut self,
        n: NewNode,
        outputs: Vec<(String, Option<Type>)>,
    ) -> (NodeId, Vec<ValueId>) {
        let id = self.g.add_node(Node {
            name: n.name,
            op: n.op,
            attrs: n.attrs,
            inputs: n.inputs.clone(),
            outputs: Vec::new(),
        });
        let outs: Vec<ValueId> = outputs
            .into_iter()
            .enumerate()
            .map(|(k, (name, ty))| {
                self.push_value(Value {
                    name,
                    ty,
                    def: Def::Node(id, k),
                })
            })
            .collect();
        self.g[id].outputs = outs.clone();
        for v in n.inputs.into_iter().flatten() {
            self.connect(v, id);
        }
        (id, outs)
    }

    fn connect(&mut self, v: ValueId, consumer: NodeId) {
        if let Some(Def::Node(p, _)) = self.values.get(v.0 as usize).map(|x| &x.def) {
            let p = *p;
            if self.g.contains_node(p) {
                self.g.add_edge(p, consumer, v);
            }
        }
    }

    fn disconnect(&mut self, v: ValueId, consumer: NodeId) {
        let e = self
            .g
            .edges_directed(consumer, Direction::Incoming)
            .find(|e| *e.weight() == v)
            .map(|e| e.id());
        if let Some(e) = e {
            self.g.remove_edge(e);
        }
    }

    pub fn value(&self, v: ValueId) -> &Value {
        &self.values[v.0 as usize]
    }
    pub fn value_mut(&mut self, v: ValueId) -> &mut Value {
        &mut self.values[v.0 as usize]
    }
    pub fn num_values(&self) -> usize {
        self.values.len()
    }
    pub fn value_ids(&self) -> impl Iterator<Item = ValueId> {
        (0..self.values.len() as u32).map(ValueId)
    }
    pub fn node(&self, n: NodeId) -> &Node {
        &self.g[n]
    }
    /// Mutable access to a node's name, op and attributes. Change inputs with
    /// [`Graph::set_input`] so that the edges follow.
    pub fn node_mut(&mut self, n: NodeId) -> &mut Node {
        &mut self.g[n]
    }
    pub fn contains_node(&self, n: NodeId) -> bool {
        self.g.contains_node(n)
    }
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.g.node_indices()
    }
    pub fn num_nodes(&self) -> usize {
        self.g.node_count()
    }
    /// The petgraph graph (read only), for algorithms.
    pub fn petgraph(&self) -> &StableDiGraph<Node, ValueId> {
        &self.g
    }

    /// The producer node of a value, if a node defines it.
    pub fn producer(&self, v: ValueId) -> Option<NodeId> {
        match self.value(v).def {
            Def::Node(n, _) if self.g.contains_node(n) => Some(n),
            _ => None,
        }
    }

    pub fn constant(&self, v: ValueId) -> Option<&Tensor> {
        match &self.value(v).def {
            Def::Const(t) => Some(t),
            _ => None,
        }
    }

    /// Nodes that read `v`, with the input slot, in node order.
    pub fn consumers(&self, v: ValueId) -> Vec<(NodeId, usize)> {
        let mut out = Vec::new();
        for n in self.g.node_indices() {
            for (k, i) in self.g[n].inputs.iter().enumerate() {
                if *i == Some(v) {
                    out.push((n, k));
                }
            }
        }
        out
    }

    /// Sets input `slot` of node `n`.
    pub fn set_input(&mut self, n: NodeId, slot: usize, v: Option<ValueId>) {
        if let Some(old) = self.g[n].inputs[slot] {
            self.disconnect(old, n);
        }
        self.g[n].inputs[slot] = v;
        if let Some(v) = v {
            self.connect(v, n);
        }
    }

    /// Makes every reader of `old` (nodes and graph outputs) read `new`.
    pub fn replace_uses(&mut self, old: ValueId, new: ValueId) {
        for (n, k) in self.consumers(old) {
            self.set_input(n, k, Some(new));
        }
        for o in self.outputs.iter_mut() {
            if *o == old {
                *o = new;
            }
        }
    }

    /// Removes a node; its output values stay in the table, defined by a node
    /// that no longer exists (the verifier reports any remaining use).
    pub fn remove_node(&mut self, n: NodeId) -> Option<Node> {
        self.g.remove_node(n)
    }

    /// Replaces a value's definition by a constant (constant folding).
    pub fn make_const(&mut self, v: ValueId, t: Tensor) {
        let ty = Type::fixed(t.dtype, &t.dims);
        let val = self.value_mut(v);
        val.def = Def::Const(t);
        val.ty = Some(ty);
    }

    /// Nodes in a topological order that is deterministic: among ready nodes,
    /// the lowest index first (so insertion order where the graph allows).
    /// `Err(node)` names a node on a cycle.
    pub fn topo_order(&self) -> Result<Vec<NodeId>, NodeId> {
        let mut indeg: BTreeMap<NodeId, usize> = BTreeMap::new();
        for n in self.g.node_indices() {
            indeg.insert(n, self.g.edges_directed(n, Direction::Incoming).count());
        }
        let mut ready: BinaryHeap<std::cmp::Reverse<NodeId>> = indeg
            .iter()
            .filter(|(_, &d)| d == 0)
            .map(|(&n, _)| std::cmp::Reverse(n))
            .collect();
        let mut order = Vec::with_capacity(indeg.len());
        while let Some(std::cmp::Reverse(n)) = ready.pop() {
            order.push(n);
            for e in self.g.edges_directed(n, Direction::Outgoing) {
                let d = indeg.get_mut(&e.target()).expect("edge target is a node");
                *d -= 1;
                if *d == 0 {
                    ready.push(std::cmp::Reverse(e.target()));
                }
            }
        }
        if order.len() == indeg.len() {
            Ok(order)
        } else {
            let stuck = indeg
                .iter()
                .find(|(n, _)| !order.contains(n))
                .map(|(&n, _)| n)
                .expect("a node is left");
            Err(stuck)
        }
    }

    /// Histogram of ops.
    pub fn op_counts(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for n in self.g.node_indices() {
            *m.entry(self.g[n].op.clone()).or_insert(0) += 1;
        }
        m
    }
}
