//! A kernel: a body that computes one work item `%i` of a 1-D launch, its
//! parameters, and the two modules it is placed in:
//!
//! - the device module: `gpu.func @name(%lpc_count, params...) kernel` computes
//!   `%i = block_id * block_dim + thread_id` and calls the body when
//!   `%i < %lpc_count` (the body is inlined by the NVVM lowering);
//! - the host module: `func.func @name(%lpc_count, params...)` runs the same body
//!   for `%i` in `0..%lpc_count`, so that every kernel is executed and tested on the
//!   CPU through MLIR's execution engine, on machines without a GPU.
//!
//! Buffers are 1-D `memref<?xT>` (flat, row-major); at the LLVM level each
//! is five words (allocated and aligned pointer, offset, size, stride), the
//! ABI the host runtime and the emulator pass.

use crate::mathlib;
use crate::mlir::Ty;
use std::fmt::Write;

/// A kernel parameter.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Param {
    /// A flat buffer of elements of this type.
    Buf(Ty),
    Index,
    F32,
}

impl Param {
    fn mlir(self) -> String {
        match self {
            Param::Buf(t) => format!("memref<?x{}>", t.mlir()),
            Param::Index => "index".into(),
            Param::F32 => "f32".into(),
        }
    }
}

/// One generated kernel.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Kernel {
    /// The symbol (`lpc_<op>_<variant>`), unique within a module.
    pub name: String,
    /// Names (without `%`) and kinds.
    pub params: Vec<(String, Param)>,
    /// The body's operations, using `%i` and `%<param>`.
    pub body: String,
}

impl Kernel {
    fn signature(&self) -> String {
        let mut s = String::new();
        for (n, p) in &self.params {
            let _ = write!(s, ", %{n}: {}", p.mlir());
        }
        s
    }

    fn call_body(&self) -> String {
        let names: Vec<String> = std::iter::once("%i".to_string())
            .chain(self.params.iter().map(|(n, _)| format!("%{n}")))
            .collect();
        let tys: Vec<String> = std::iter::once("index".to_string())
            .chain(self.params.iter().map(|(_, p)| p.mlir()))
            .collect();
        format!(
            "func.call @{}_body({}) : ({}) -> ()",
            self.name,
            names.join(", "),
            tys.join(", ")
        )
    }

    fn body_func(&self) -> String {
        format!(
            "  func.func private @{}_body(%i: index{}) {{\n{}    return\n  }}\n",
            self.name,
            self.signature(),
            self.body
        )
    }

    /// The body and the device entry point: the kernel's part of the
    /// device module (what the snapshot tests pin).
    pub fn device_source(&self) -> String {
        format!("{}{}", self.body_func(), self.gpu_func())
    }

    /// The device entry point.
    pub fn gpu_func(&self) -> String {
        format!(
            "  gpu.func @{name}(%lpc_count: index{sig}) kernel {{\n    \
             %lpc_bid = gpu.block_id x\n    %lpc_bdim = gpu.block_dim x\n    \
             %lpc_tid = gpu.thread_id x\n    %lpc_base = arith.muli %lpc_bid, %lpc_bdim : index\n    \
             %i = arith.addi %lpc_base, %lpc_tid : index\n    \
             %lpc_in = arith.cmpi ult, %i, %lpc_count : index\n    \
             scf.if %lpc_in {{\n      {call}\n    }}\n    gpu.return\n  }}\n",
            name = self.name,
            sig = self.signature(),
            call = self.call_body()
        )
    }

    /// The host entry point (sequential loop over the work items).
    pub fn host_func(&self) -> String {
        format!(
            "  func.func @{name}(%lpc_count: index{sig}) {{\n    \
             %lpc_c0 = arith.constant 0 : index\n    %lpc_c1 = arith.constant 1 : index\n    \
             scf.for %i = %lpc_c0 to %lpc_count step %lpc_c1 {{\n      {call}\n    }}\n    return\n  }}\n",
            name = self.name,
            sig = self.signature(),
            call = self.call_body()
        )
    }
}

/// The device module holding `kernels` (names must be distinct).
pub fn gpu_module(kernels: &[Kernel]) -> String {
    let mut s =
        String::from("module attributes {gpu.container_module} {\ngpu.module @lpc_kernels {\n");
    s.push_str(&mathlib::source(true));
    for k in kernels {
        s.push_str(&k.body_func());
        s.push_str(&k.gpu_func());
    }
    s.push_str("}\n}\n");
    s
}

/// The host module holding `kernels`, for the execution engine.
pub fn host_module(kernels: &[Kernel]) -> String {
    let mut s = String::from("module {\n");
    s.push_str(&mathlib::source(false));
    for k in kernels {
        s.push_str(&k.body_func());
        s.push_str(&k.host_func());
    }
    s.push_str("}\n");
    s
}
