//! The conformance and end-to-end suites, as one test binary.
//!
//! Each test binary links its own copy of everything it uses (LLVM and MLIR
//! are hundreds of megabytes each), so the suites are modules of one binary:
//! that keeps a cold CI build's disk use and link time down.

mod canonical_form;
mod frontend_fuzz;
mod golden_vectors;
mod interpreter;
mod onnx_frontend;
mod op_cases;
mod quantization;
