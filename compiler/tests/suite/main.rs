//! The compiler's suites (CLI, codegen, large imports), as one test binary.
//!
//! Each test binary links its own copy of everything it uses (LLVM and MLIR
//! are hundreds of megabytes each), so the suites are modules of one binary:
//! that keeps a cold CI build's disk use and link time down.

mod codegen;
mod common;
mod large_import;
mod model_cli;
mod quantize_cli;
