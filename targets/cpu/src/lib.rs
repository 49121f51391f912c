//! lpc's CPU back end: the code generator ([`codegen`]: IR graph to LLVM IR
//! through inkwell), the target machine and optimization pipeline, object
//! emission, and [`build`], which turns a graph into `model.so` + `model.h` +
//! `model.lpcw` (linked with the embedded `lpc-rt` archive). LLVM stays
//! behind this crate.

pub mod artifact;
pub mod bench;
pub mod codegen;
pub mod header;

use inkwell::module::Module;
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{
    CodeModel, FileType, InitializationConfig, RelocMode, Target, TargetMachine, TargetTriple,
};
use inkwell::OptimizationLevel;
use std::path::Path;
use std::process::Command;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CpuError {
    #[error("LLVM target initialization failed: {0}")]
    Init(String),
    #[error("no LLVM target for triple {triple}: {msg}")]
    Target { triple: String, msg: String },
    #[error("LLVM could not create a target machine for {triple} (cpu {cpu})")]
    Machine { triple: String, cpu: String },
    #[error("LLVM pass pipeline {pipeline} failed: {msg}")]
    Passes { pipeline: String, msg: String },
    #[error("LLVM module does not verify: {0}")]
    Verify(String),
    #[error("writing object file {path}: {msg}")]
    Emit { path: String, msg: String },
    #[error("linking {path} failed: {msg}")]
    Link { path: String, msg: String },
    #[error(transparent)]
    Codegen(#[from] codegen::CgError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// What to generate code for: an LLVM triple, CPU name and feature string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuTarget {
    pub triple: String,
    pub cpu: String,
    pub features: String,
}

impl CpuTarget {
    /// The machine lpc runs on (`--target-cpu native`).
    pub fn host() -> Result<Self, CpuError> {
        Target::initialize_native(&InitializationConfig::default()).map_err(CpuError::Init)?;
        Ok(Self {
            triple: TargetMachine::get_default_triple()
                .as_str()
                .to_string_lossy()
                .into_owned(),
            cpu: TargetMachine::get_host_cpu_name().to_string(),
            features: TargetMachine::get_host_cpu_features().to_string(),
        })
    }

    /// A position-independent target machine at the given optimization level.
    pub fn machine(&self, opt: OptimizationLevel) -> Result<TargetMachine, CpuError> {
        Target::initialize_native(&InitializationConfig::default()).map_err(CpuError::Init)?;
        let triple = TargetTriple::create(&self.triple);
        let target = Target::from_triple(&triple).map_err(|e| CpuError::Target {
            triple: self.triple.clone(),
            msg: e.to_string(),
        })?;
        target
            .create_target_machine(
                &triple,
                &self.cpu,
                &self.features,
                opt,
                RelocMode::PIC,
                CodeModel::Default,
            )
            .ok_or_else(|| CpuError::Machine {
                triple: self.triple.clone(),
                cpu: self.cpu.clone(),
            })
    }
}

/// The new-pass-manager pipeline for an `-O` level.
pub fn pipeline(opt: OptimizationLevel) -> &'static str {
    match opt {
        OptimizationLevel::None => "default<O0>",
        OptimizationLevel::Less => "default<O1>",
        OptimizationLevel::Default => "default<O2>",
        OptimizationLevel::Aggressive => "default<O3>",
    }
}

/// Verifies and optimizes a module for a target machine.
pub fn optimize(
    module: &Module,
    tm: &TargetMachine,
    opt: OptimizationLevel,
) -> Result<(), CpuError> {
    module
        .verify()
        .map_err(|e| CpuError::Verify(e.to_string()))?;
    module.set_triple(&tm.get_triple());
    module.set_data_layout(&tm.get_target_data().get_data_layout());
    let p = pipeline(opt);
    module
        .run_passes(p, tm, PassBuilderOptions::create())
        .map_err(|e| CpuError::Passes {
            pipeline: p.to_string(),
            msg: e.to_string(),
        })
}

/// Writes the module as an object file.
pub fn emit_object(module: &Module, tm: &TargetMachine, path: &Path) -> Result<(), CpuError> {
    tm.write_to_file(module, FileType::Object, path)
        .map_err(|e| CpuError::Emit {
            path: path.display().to_string(),
            msg: e.to_string(),
        })
}

/// The module as target assembly text (`--emit asm`).
pub fn emit_asm(module: &Module, tm: &TargetMachine) -> Result<String, CpuError> {
    let buf = tm
        .write_to_memory_buffer(module, FileType::Assembly)
        .map_err(|e| CpuError::Emit {
            path: "<memory>".into(),
            msg: e.to_string(),
        })?;
    Ok(String::from_utf8_lossy(buf.as_slice()).into_owned())
}

/// Links object files (and extra linker arguments) into a shared library with
/// the system C compiler driver.
pub fn link_shared(objects: &[&Path], extra: &[&str], out: &Path) -> Result<(), CpuError> {
    let output = Command::new(std::env::var("LPC_CC").unwrap_or_else(|_| "cc".into()))
        .arg("-shared")
        .arg("-o")
        .arg(out)
        .args(objects)
        .args(extra)
        .output()
        .map_err(|e| CpuError::Link {
            path: out.display().to_string(),
            msg: format!("running cc: {e}"),
        })?;
    if !output.status.success() {
        return Err(CpuError::Link {
            path: out.display().to_string(),
            msg: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}
