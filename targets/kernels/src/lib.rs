//! lpc's GPU kernels as MLIR text, without linking MLIR.
//!
//! The generators (`kernels/`, one file per op family) write each kernel as
//! a body over work item `%i` with a parameter list (`kernel.rs`); the same
//! body goes into the device module (`gpu.func`, lowered to PTX by
//! `lpc-target-gpu`) and into the host module (a loop over the items, run on
//! the CPU to test the kernels and to emulate a device). The CPU code
//! generator uses the kernels' parameter lists to emit launches, so it
//! depends on this crate and not on MLIR.

pub mod kernel;
pub mod kernels;
mod mathlib;
pub mod mlir;
