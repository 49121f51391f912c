//! Kernel generators, one file per op family.

pub mod elementwise;
pub mod linalg;
pub mod nn;
pub mod qgemm;
pub mod shape;
