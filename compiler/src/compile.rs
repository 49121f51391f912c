//! `lpc compile`: the driver. Today it imports, canonicalizes and emits the
//! IR (`--emit ir`); later stages (quantization, code generation) extend the
//! same pipeline.

use crate::onnx::{import, OnnxError, OnnxModel};
use lpc_ir::text;
use lpc_passes::{canonicalize, PassError, PassManager, RunOptions};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CompileError {
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error("{model}: {source}")]
    Pass {
        model: String,
        #[source]
        source: PassError,
    },
    #[error("{0}")]
    Usage(String),
    #[error("{model}: {msg}")]
    Codegen { model: String, msg: String },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where code generation stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Llvm,
    Asm,
    Obj,
    Lib,
    Mlir,
    Ptx,
}

/// Code generation options (`lpc compile --emit llvm|asm|obj|lib`).
#[derive(Debug, Clone)]
pub struct Codegen {
    pub emit: Stage,
    /// `--target cuda`: the GPU architecture.
    pub gpu: Option<String>,
    pub opt_level: u8,
    pub target_cpu: String,
    pub target_features: Option<String>,
    pub embed_weights: bool,
    pub max_dim: u64,
    /// Time every node (`--profile`; `lpc run` prints the table).
    pub profile: bool,
}

/// A native back end: generates code for the final graph into `out`
/// (`None`: text for stdout, `--emit llvm|asm`); returns a summary. The
/// `lpc` binary passes the LLVM back end, which keeps LLVM out of the
/// library and of every test binary linking it.
pub type Backend =
    fn(g: &lpc_ir::Graph, o: &Codegen, model: &Path, out: Option<&Path>) -> Result<String, String>;

#[derive(Debug, Clone, Default)]
pub struct CompileOptions {
    pub model: PathBuf,
    pub output: Option<PathBuf>,
    pub print_ir_after: Vec<String>,
    pub dump_phases_to: Option<PathBuf>,
    pub time_passes: bool,
    /// Quantization (after canonicalization), if any.
    pub quant: Option<lpc_passes::QuantConfig>,
    /// Print the effective configuration and the per-layer plan.
    pub verbose: bool,
    /// Generate native code (else emit the IR).
    pub codegen: Option<Codegen>,
    pub backend: Option<Backend>,
}

/// The pipeline of a compile: canonicalization, then quantization.
pub fn pipeline(quant: Option<&lpc_passes::QuantConfig>) -> Vec<Box<dyn lpc_passes::Pass>> {
    let mut p = canonicalize();
    if let Some(q) = quant {
        p.extend(lpc_passes::quantize(q));
    }
    p
}

/// The plan's warnings and (verbose) its per-layer decisions, computed on the
/// canonical graph.
pub fn plan_report(g: &lpc_ir::Graph, q: &lpc_passes::QuantConfig, verbose: bool) -> String {
    let plan = lpc_passes::quant_policy::plan(g, q);
    let mut out = String::new();
    if verbose {
        out += &crate::quant_args::describe(q);
        for l in &plan.layers {
            let f = match l.formats {
                Some((w, a)) => format!(
                    "W {w}, A {}",
                    a.map_or("f32".to_string(), |a| a.to_string())
                ),
                None if q.unquantized_bf16 => "bf16".into(),
                None => "f32".into(),
            };
            let _ = writeln!(out, "  {}: {f} ({})", l.name, l.reason);
        }
    }
    for w in &plan.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}

fn write_atomic(path: &Path, text: &str) -> Result<(), CompileError> {
    crate::atomic::write(path, text.as_bytes()).map_err(|source| CompileError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// Runs the pipeline; returns the text for stdout (the IR when no `-o`,
/// printed phases, timings).
pub fn compile(o: &CompileOptions) -> Result<String, CompileError> {
    for p in &o.print_ir_after {
        if p != "all" && lpc_passes::by_name(p).is_none() {
            let names: Vec<_> = lpc_passes::registry()
                .iter()
                .map(|p| p.name())
                .collect::<Vec<_>>();
            return Err(CompileError::Usage(format!(
                "--print-ir-after {p}: no such pass (passes: all, {})",
                names.join(", ")
            )));
        }
    }
    if let Some(d) = &o.dump_phases_to {
        if !d.is_dir() {
            return Err(CompileError::Usage(format!(
                "--dump-phases-to: directory {} does not exist",
                d.display()
            )));
        }
    }
    let mut g = import(&OnnxModel::load(&o.model)?)?;
    let mut pre = String::new();
    if let Some(q) = &o.quant {
        // The plan is made on the canonical graph.
        let mut cg = g.clone();
        PassManager::new(canonicalize(), RunOptions::default())
            .run(&mut cg)
            .map_err(|source| CompileError::Pass {
                model: o.model.display().to_string(),
                source,
            })?;
        pre = plan_report(&cg, q, o.verbose);
    }
    let pm = PassManager::new(
        pipeline(o.quant.as_ref()),
        RunOptions {
            verify: cfg!(debug_assertions),
            print_after: if o.dump_phases_to.is_some() {
                vec!["all".into()]
            } else {
                o.print_ir_after.clone()
            },
        },
    );
    let input_ir = o.dump_phases_to.as_ref().map(|_| text::print(&g));
    let report = pm.run(&mut g).map_err(|source| CompileError::Pass {
        model: o.model.display().to_string(),
        source,
    })?;
    let mut out = pre;
    for (pass, ir) in &report.printed {
        if o.print_ir_after.iter().any(|p| p == "all" || p == pass) {
            let _ = writeln!(out, "// ----- IR after {pass} -----\n{ir}");
        }
    }
    if let (Some(dir), Some(input_ir)) = (&o.dump_phases_to, input_ir) {
        let stem = o
            .model
            .file_stem()
            .map_or("model".into(), |s| s.to_string_lossy().into_owned());
        write_atomic(&dir.join(format!("{stem}.0.input.ir")), &input_ir)?;
        for (i, (pass, ir)) in report.printed.iter().enumerate() {
            write_atomic(&dir.join(format!("{stem}.{}.{pass}.ir", i + 1)), ir)?;
        }
    }
    match &o.codegen {
        None => {
            let ir = text::print(&g);
            match &o.output {
                Some(p) => write_atomic(p, &ir)?,
                None => out.push_str(&ir),
            }
        }
        Some(cgo) => {
            let backend = o.backend.ok_or_else(|| {
                CompileError::Usage("this build of lpc has no code generator".into())
            })?;
            if o.output.is_none() && matches!(cgo.emit, Stage::Obj | Stage::Lib) {
                return Err(CompileError::Usage(
                    "--emit obj|lib needs an output file (-o model.so)".into(),
                ));
            }
            out += &backend(&g, cgo, &o.model, o.output.as_deref()).map_err(|msg| {
                CompileError::Codegen {
                    model: o.model.display().to_string(),
                    msg,
                }
            })?;
        }
    }
    if o.time_passes {
        let total: f64 = report.timings.iter().map(|t| t.1.as_secs_f64()).sum();
        let _ = writeln!(out, "pass timings (total {:.2} ms):", total * 1e3);
        for (pass, t, changed) in &report.timings {
            let _ = writeln!(
                out,
                "  {:>9.3} ms  {pass}{}",
                t.as_secs_f64() * 1e3,
                if *changed { "" } else { " (no change)" }
            );
        }
    }
    Ok(out)
}
