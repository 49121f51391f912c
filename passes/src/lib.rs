//! lpc's passes over the IR, one file each, one registry, one pipeline list.
//!
//! Every pass states in its doc comment what it matches, what it guarantees
//! and what must run before it. Passes never do I/O and keep no state across
//! runs. The [`PassManager`] verifies the graph after every pass in tests and
//! debug builds, and offers `--print-ir-after`, `--time-passes` and
//! `--dump-phases-to` to the driver.

mod bf16_linear;
mod cse;
mod dce;
mod fold;
mod fold_shapes;
mod fuse_act;
mod fuse_attention;
mod fuse_linear;
mod fuse_norm;
mod fuse_parallel;
mod fuse_qgemm;
pub mod gptq;
pub mod infer_shapes;
mod infer_types;
pub mod quant_policy;
mod quantize_insert;
mod rotate;
pub mod smooth;
pub mod util;
pub mod weights_prequantize;

pub use bf16_linear::Bf16Linear;
pub use fuse_qgemm::FuseQgemm;
use lpc_ir::{text, verify::verify, Graph};
pub use quant_policy::QuantConfig;
pub use quantize_insert::QuantizeInsert;
pub use rotate::rotation_block;
pub use rotate::Rotate;
use std::time::{Duration, Instant};
use thiserror::Error;
pub use weights_prequantize::WeightsPrequantize;

#[derive(Debug, Error)]
pub enum PassError {
    #[error("pass {pass}: {msg}")]
    Failed { pass: &'static str, msg: String },
    #[error("after pass {pass}: {source}")]
    Verify {
        pass: &'static str,
        #[source]
        source: lpc_ir::verify::VerifyError,
    },
}

/// A transformation of the graph. `run` returns whether it changed anything.
pub trait Pass {
    fn name(&self) -> &'static str;
    fn summary(&self) -> &'static str;
    fn run(&self, g: &mut Graph) -> Result<bool, String>;
}

/// Every pass by name.
pub fn registry() -> Vec<Box<dyn Pass>> {
    vec![
        Box::new(infer_types::InferTypes),
        Box::new(fold::ConstFold),
        Box::new(fold_shapes::FoldShapes),
        Box::new(cse::Cse),
        Box::new(dce::Dce),
        Box::new(fuse_linear::FuseLinear),
        Box::new(fuse_norm::FuseRmsNorm),
        Box::new(fuse_act::FuseActivations),
        Box::new(fuse_attention::FuseAttention),
        Box::new(fuse_parallel::FuseParallelLinear),
        Box::new(fuse_act::FuseSwigluSplit),
        Box::new(smooth::Smooth(QuantConfig::default())),
        Box::new(rotate::Rotate(QuantConfig::default())),
        Box::new(quantize_insert::QuantizeInsert(QuantConfig::default())),
        Box::new(weights_prequantize::WeightsPrequantize(
            QuantConfig::default(),
        )),
        Box::new(fuse_qgemm::FuseQgemm),
        Box::new(bf16_linear::Bf16Linear),
    ]
}

/// The quantization pipeline for a configuration (after `canonicalize()`).
pub fn quantize(cfg: &QuantConfig) -> Vec<Box<dyn Pass>> {
    let mut p = quantize_insertion(cfg);
    p.extend(quantize_packing(cfg));
    p
}

/// The first half of [`quantize`]: smoothing, rotation and `lpc.quantize`
/// insertion; the weights are still f32 (what GPTQ calibration packs from).
pub fn quantize_insertion(cfg: &QuantConfig) -> Vec<Box<dyn Pass>> {
    vec![
        Box::new(smooth::Smooth(cfg.clone())),
        Box::new(rotate::Rotate(cfg.clone())),
        Box::new(quantize_insert::QuantizeInsert(cfg.clone())),
    ]
}

/// The second half of [`quantize`]: weights packed, `qgemm` fused, the
/// layers left unquantized in bf16 (unless `QuantConfig::unquantized_bf16`
/// is off or nothing is quantized).
pub fn quantize_packing(cfg: &QuantConfig) -> Vec<Box<dyn Pass>> {
    let mut p: Vec<Box<dyn Pass>> = vec![
        Box::new(weights_prequantize::WeightsPrequantize(cfg.clone())),
        Box::new(fuse_qgemm::FuseQgemm),
    ];
    if cfg.weights.is_some() && cfg.unquantized_bf16 {
        p.push(Box::new(bf16_linear::Bf16Linear));
    }
    p.push(by_name("dce").expect("registered"));
    p
}

pub fn by_name(name: &str) -> Option<Box<dyn Pass>> {
    registry().into_iter().find(|p| p.name() == name)
}

/// The canonicalization pipeline: every exporter's spelling to lpc's ops.
pub fn canonicalize() -> Vec<Box<dyn Pass>> {
    [
        "infer-types",
        "const-fold",
        "fold-shapes",
        "const-fold",
        "cse",
        "dce",
        "fuse-rms-norm",
        "fuse-activations",
        "fuse-linear",
        "fuse-attention",
        "fuse-parallel-linear",
        "dce",
        "fuse-swiglu-split",
        "cse",
        "dce",
    ]
    .iter()
    .map(|n| by_name(n).expect("registered pass"))
    .collect()
}

/// Options of a pipeline run.
#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    /// Verify after every pass (on in tests and debug builds).
    pub verify: bool,
    /// Pass names after which to print the IR (`all` for every pass).
    pub print_after: Vec<String>,
}

/// What a pipeline run produced besides the graph.
#[derive(Debug, Default)]
pub struct RunReport {
    pub timings: Vec<(&'static str, Duration, bool)>,
    /// (pass name, IR text) snapshots requested by `print_after`.
    pub printed: Vec<(&'static str, String)>,
}

/// Runs passes in order.
pub struct PassManager {
    pub passes: Vec<Box<dyn Pass>>,
    pub options: RunOptions,
}

impl std::fmt::Debug for PassManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.passes.iter().map(|p| p.name()).collect();
        f.debug_struct("PassManager")
            .field("passes", &names)
            .finish()
    }
}

impl PassManager {
    pub fn new(passes: Vec<Box<dyn Pass>>, options: RunOptions) -> Self {
        Self { passes, options }
    }

    pub fn run(&self, g: &mut Graph) -> Result<RunReport, PassError> {
        let mut report = RunReport::default();
        for p in &self.passes {
            let t = Instant::now();
            let changed = p.run(g).map_err(|msg| PassError::Failed {
                pass: p.name(),
                msg,
            })?;
            report.timings.push((p.name(), t.elapsed(), changed));
            if self.options.verify || cfg!(debug_assertions) {
                verify(g).map_err(|source| PassError::Verify {
                    pass: p.name(),
                    source,
                })?;
            }
            if self
                .options
                .print_after
                .iter()
                .any(|n| n == "all" || n == p.name())
            {
                report.printed.push((p.name(), text::print(g)));
            }
        }
        Ok(report)
    }
}
