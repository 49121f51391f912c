//! lpc, the compiler: command line, driver, the ONNX frontend.

pub mod cli;
pub mod npy;
pub mod onnx;
pub mod quantize;
