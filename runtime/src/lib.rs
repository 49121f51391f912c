//! lpc's tiny runtime.
//!
//! Today this crate holds the one reference implementation of each lpc number
//! format ([`formats`]): the compiler uses it at compile time to pre-quantize
//! weights, and the libraries lpc emits link it to quantize activations at run
//! time. Later it also carries the thread pool, arena and weight mapping that
//! generated code calls into.
//!
//! Architecture invariant: this crate depends on nothing else in the workspace,
//! and its non-optional dependencies are `half` and `bytemuck` only.

pub mod formats;
pub mod hadamard;
pub mod math;

pub use formats::{
    BlockFormat, Element, Format, FormatError, Hif4, Hif4Variant, Hif8, Hif8Rounding, Mxfp4,
    Mxfp4Rounding,
};
