//! The CPU target's suites (toolchain, qgemm kernels, elementary functions), as one test binary.
//!
//! Each test binary links its own copy of everything it uses (LLVM and MLIR
//! are hundreds of megabytes each), so the suites are modules of one binary:
//! that keeps a cold CI build's disk use and link time down.

mod linear;
mod math;
mod qgemm;
mod toolchain;
