//! lpc's IR: a typed graph on petgraph.
//!
//! - [`Graph`]: values (inputs, constants pointing into mapped files, node
//!   results) with element types and symbolic shapes, and nodes with ops and
//!   faithfully kept ONNX attributes.
//! - [`text`]: the textual form (print, parse, print gives the same text).
//! - [`verify`]: structural and type checks that name the offending node.

mod dtype;
mod graph;
pub mod interp;
mod tensor;
pub mod text;
pub mod verify;

pub use dtype::DType;
pub use graph::{Attr, Def, Dim, Graph, NewNode, Node, NodeId, Type, Value, ValueId};
pub use tensor::Tensor;
