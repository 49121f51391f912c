//! lpc, the compiler: command line, driver, the ONNX frontend.

pub mod atomic;
pub mod cli;
pub mod compile;
pub mod eval;
pub mod generate;
pub mod gptq;
pub mod inspect;
pub mod native;
pub mod npy;
pub mod onnx;
pub mod quant_args;
pub mod quantize;
pub mod run;
pub mod synth;
