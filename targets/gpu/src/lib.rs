//! lpc's GPU back end.
//!
//! Today: an MLIR context with every dialect, pass and LLVM translation
//! registered, and the lowering of a GPU module (`gpu`, `scf`, `arith`,
//! `memref`, ... dialects) to PTX text through the NVVM pipeline, without a
//! CUDA toolkit: the CUDA driver JIT-compiles the PTX at load time. The
//! kernel generators of issue 8 build on this. MLIR stays behind this crate.

pub mod emulate;
pub use lpc_kernels::{kernel, kernels, mlir};

use melior::dialect::DialectRegistry;
use melior::ir::attribute::ArrayAttribute;
use melior::ir::block::BlockLike;
use melior::ir::operation::OperationLike;
use melior::ir::{AttributeLike, Module};
use melior::pass::PassManager;
use melior::utility::{
    parse_pass_pipeline, register_all_dialects, register_all_llvm_translations, register_all_passes,
};
use melior::Context;
use std::cell::RefCell;
use std::rc::Rc;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum GpuError {
    #[error("unsupported GPU architecture `{0}` (supported: {list})", list = SUPPORTED_ARCHS.join(", "))]
    Arch(String),
    #[error("MLIR does not parse: {0}")]
    Parse(String),
    #[error("MLIR pass pipeline failed: {0}")]
    Pipeline(String),
    #[error("the lowered module holds no PTX (no gpu.binary with a PTX object)")]
    NoPtx,
}

/// Architectures lpc lowers to, each with a PTX ISA feature that supports it.
/// A missing or too old PTX feature aborts the whole process inside LLVM
/// (`PTX version 6.0 does not support target 'sm_90'`), so only these pass.
pub const SUPPORTED_ARCHS: &[&str] = &["sm_80", "sm_86", "sm_89", "sm_90", "sm_90a"];

fn ptx_feature(arch: &str) -> Option<&'static str> {
    SUPPORTED_ARCHS.contains(&arch).then_some("+ptx80")
}

/// One `gpu.binary` of a lowered module: its symbol and its PTX text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PtxModule {
    pub name: String,
    pub ptx: String,
}

/// An MLIR context ready for lpc's GPU lowering.
#[derive(Debug)]
pub struct GpuCompiler {
    context: Context,
}

impl Default for GpuCompiler {
    fn default() -> Self {
        Self::new()
    }
}

impl GpuCompiler {
    pub fn new() -> Self {
        let registry = DialectRegistry::new();
        register_all_dialects(&registry);
        let context = Context::new_with_registry(&registry, false);
        context.load_all_available_dialects();
        register_all_llvm_translations(&context);
        register_all_passes();
        Self { context }
    }

    /// Runs `f`, collecting MLIR's diagnostics, and returns them with its result.
    fn with_diagnostics<T>(&self, f: impl FnOnce() -> T) -> (T, String) {
        let messages = Rc::new(RefCell::new(Vec::new()));
        let sink = messages.clone();
        let id = self.context.attach_diagnostic_handler(move |d| {
            sink.borrow_mut().push(format!("{}: {}", d.location(), d));
            true
        });
        let r = f();
        self.context.detach_diagnostic_handler(id);
        let text = messages.borrow().join("; ");
        (r, text)
    }

    /// Parses MLIR text and verifies it.
    pub fn parse<'c>(&'c self, source: &str) -> Result<Module<'c>, GpuError> {
        let (m, diag) = self.with_diagnostics(|| Module::parse(&self.context, source));
        let m = m.ok_or(GpuError::Parse(diag))?;
        if !m.as_operation().verify() {
            return Err(GpuError::Parse("module does not verify".into()));
        }
        Ok(m)
    }

    /// Lowers a host module (`func`, `scf`, `arith`, `math`, `memref`) to the
    /// LLVM dialect, ready for MLIR's execution engine.
    pub fn lower_for_host<'c>(&'c self, source: &str) -> Result<Module<'c>, GpuError> {
        let mut module = self.parse(source)?;
        let pipeline = "builtin.module(convert-scf-to-cf,convert-math-to-llvm,convert-math-to-libm,\
             expand-strided-metadata,finalize-memref-to-llvm,convert-arith-to-llvm,convert-cf-to-llvm,\
             convert-func-to-llvm,reconcile-unrealized-casts)";
        let pm = PassManager::new(&self.context);
        parse_pass_pipeline(pm.as_operation_pass_manager(), pipeline)
            .map_err(|e| GpuError::Pipeline(e.to_string()))?;
        let (r, diag) = self.with_diagnostics(|| pm.run(&mut module));
        r.map_err(|e| GpuError::Pipeline(format!("{e}: {diag}")))?;
        Ok(module)
    }

    /// The host module of `kernels` as LLVM IR text (what a GPU library
    /// links for `LPC_DEVICE=emulate`).
    pub fn host_llvm_ir(
        &self,
        kernels: &[lpc_kernels::kernel::Kernel],
    ) -> Result<String, GpuError> {
        let m = self.lower_for_host(&lpc_kernels::kernel::host_module(kernels))?;
        // SAFETY: `m` is a verified module in the LLVM dialect; the returned
        // string is malloc'ed by MLIR's C API and freed here after copying.
        unsafe {
            let p = mlir_sys::mlirTranslateModuleToLLVMIRToString(m.as_operation().to_raw());
            if p.is_null() {
                return Err(GpuError::Pipeline("translation to LLVM IR failed".into()));
            }
            let s = std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned();
            free(p as *mut std::ffi::c_void);
            Ok(s)
        }
    }

    /// Lowers every `gpu.module` of `source` to PTX for `arch`.
    pub fn lower_to_ptx(&self, source: &str, arch: &str) -> Result<Vec<PtxModule>, GpuError> {
        let features = ptx_feature(arch).ok_or_else(|| GpuError::Arch(arch.to_string()))?;
        let mut module = self.parse(source)?;
        let pipeline = format!(
            "builtin.module(gpu-lower-to-nvvm-pipeline{{cubin-chip={arch} \
             cubin-features={features} cubin-format=isa}})"
        );
        let pm = PassManager::new(&self.context);
        parse_pass_pipeline(pm.as_operation_pass_manager(), &pipeline)
            .map_err(|e| GpuError::Pipeline(e.to_string()))?;
        let (r, diag) = self.with_diagnostics(|| pm.run(&mut module));
        r.map_err(|e| GpuError::Pipeline(format!("{e}: {diag}")))?;
        let ptx = extract_ptx(&module);
        if ptx.is_empty() {
            return Err(GpuError::NoPtx);
        }
        Ok(ptx)
    }
}

extern "C" {
    fn free(p: *mut std::ffi::c_void);
}

/// The PTX text of each `gpu.binary` op at the top level of `module`.
fn extract_ptx(module: &Module) -> Vec<PtxModule> {
    let mut out = Vec::new();
    let mut op = module.body().first_operation();
    while let Some(o) = op {
        if o.name().as_string_ref().as_str() == Ok("gpu.binary") {
            let name = o
                .attribute("sym_name")
                .map(|a| a.to_string().trim_matches('"').to_string())
                .unwrap_or_default();
            if let Ok(objects) = o.attribute("objects").and_then(ArrayAttribute::try_from) {
                for i in 0..objects.len() {
                    let Ok(obj) = objects.element(i) else {
                        continue;
                    };
                    // SAFETY: `obj` is a live attribute of this context; the
                    // C API only reads it, and the returned string points
                    // into the attribute's storage, copied out at once.
                    let text = unsafe {
                        if !mlir_sys::mlirAttributeIsAGPUObjectAttr(obj.to_raw()) {
                            continue;
                        }
                        let s = mlir_sys::mlirGPUObjectAttrGetObject(obj.to_raw());
                        let bytes = std::slice::from_raw_parts(s.data as *const u8, s.length);
                        String::from_utf8_lossy(bytes).into_owned()
                    };
                    out.push(PtxModule {
                        name: name.clone(),
                        ptx: text,
                    });
                }
            }
        }
        op = o.next_in_block();
    }
    out
}
