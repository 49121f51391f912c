//! lpc, the compiler: command line, driver and (with issue 3) the ONNX frontend.

pub mod cli;
pub mod npy;
pub mod quantize;
