//! Runs kernels on the CPU: their host module (the same bodies as the device
//! module) compiled by MLIR's execution engine. This is how every kernel is
//! tested on machines without a GPU, against lpc's interpreter.

use crate::kernel::{host_module, Kernel, Param};
use crate::{GpuCompiler, GpuError};
use melior::ir::Module;
use melior::ExecutionEngine;

/// An argument of a launch. Buffers are raw element storage, as the device
/// would hold it (packed blocks are `I8` bytes).
#[derive(Debug)]
pub enum Arg<'a> {
    Buf(&'a mut [u8]),
    Index(i64),
    F32(f32),
}

/// Compiled host versions of a set of kernels.
pub struct Emulator<'c> {
    _module: Module<'c>,
    engine: ExecutionEngine,
    kernels: Vec<Kernel>,
}

impl GpuCompiler {
    /// JIT-compiles the host module of `kernels`.
    pub fn emulator(&self, kernels: &[Kernel]) -> Result<Emulator<'_>, GpuError> {
        let module = self.lower_for_host(&host_module(kernels))?;
        let engine = ExecutionEngine::new(&module, 2, &[], false, false);
        Ok(Emulator {
            _module: module,
            engine,
            kernels: kernels.to_vec(),
        })
    }
}

/// The memref descriptor of a 1-D buffer: allocated and aligned pointer,
/// offset, size, stride.
#[repr(C)]
struct Desc {
    alloc: *mut u8,
    align: *mut u8,
    offset: i64,
    size: i64,
    stride: i64,
}

impl std::fmt::Debug for Emulator<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.kernels.iter().map(|k| k.name.as_str()).collect();
        f.debug_struct("Emulator").field("kernels", &names).finish()
    }
}

impl Emulator<'_> {
    /// Runs work items `0..n` of kernel `name` (sequentially).
    ///
    /// Checks the arguments against the kernel's parameters (count, kinds,
    /// buffer lengths a whole number of elements); out-of-bounds indexing
    /// inside a kernel is not checked, as on the device.
    pub fn launch(&self, name: &str, n: usize, args: &mut [Arg]) -> Result<(), String> {
        let k = self
            .kernels
            .iter()
            .find(|k| k.name == name)
            .ok_or_else(|| format!("no kernel `{name}`"))?;
        if k.params.len() != args.len() {
            return Err(format!(
                "`{name}` takes {} arguments, got {}",
                k.params.len(),
                args.len()
            ));
        }
        let mut n = n as i64;
        let mut descs = Vec::new();
        let mut idx = Vec::new();
        let mut fl = Vec::new();
        for ((pname, p), a) in k.params.iter().zip(args.iter_mut()) {
            match (p, a) {
                (Param::Buf(t), Arg::Buf(b)) => {
                    if b.len() % t.size() != 0 {
                        return Err(format!("buffer `{pname}` is not whole {t:?} elements"));
                    }
                    descs.push(Desc {
                        alloc: b.as_mut_ptr(),
                        align: b.as_mut_ptr(),
                        offset: 0,
                        size: (b.len() / t.size()) as i64,
                        stride: 1,
                    })
                }
                (Param::Index, Arg::Index(v)) => idx.push(*v),
                (Param::F32, Arg::F32(v)) => fl.push(*v),
                (p, a) => return Err(format!("argument `{pname}`: {a:?} for a {p:?}")),
            }
        }
        // Packed calling convention: one pointer per LLVM-level argument.
        let mut ptrs: Vec<*mut ()> = vec![&mut n as *mut i64 as *mut ()];
        let (mut di, mut ii, mut fi) = (0, 0, 0);
        for (_, p) in &k.params {
            match p {
                Param::Buf(_) => {
                    let d = &mut descs[di];
                    di += 1;
                    ptrs.push(&mut d.alloc as *mut *mut u8 as *mut ());
                    ptrs.push(&mut d.align as *mut *mut u8 as *mut ());
                    ptrs.push(&mut d.offset as *mut i64 as *mut ());
                    ptrs.push(&mut d.size as *mut i64 as *mut ());
                    ptrs.push(&mut d.stride as *mut i64 as *mut ());
                }
                Param::Index => {
                    ptrs.push(&mut idx[ii] as *mut i64 as *mut ());
                    ii += 1;
                }
                Param::F32 => {
                    ptrs.push(&mut fl[fi] as *mut f32 as *mut ());
                    fi += 1;
                }
            }
        }
        let f = self.engine.lookup(&format!("_mlir_{name}"));
        if f.is_null() {
            return Err(format!("`{name}` was not compiled"));
        }
        // SAFETY: `_mlir_<name>` is the execution engine's packed wrapper of
        // `name`, whose LLVM-level parameters are exactly the slots pushed
        // above (checked against the kernel's parameter list); every slot
        // and buffer outlives the call.
        unsafe {
            let f: extern "C" fn(*mut *mut ()) = std::mem::transmute(f);
            f(ptrs.as_mut_ptr());
        }
        Ok(())
    }
}
