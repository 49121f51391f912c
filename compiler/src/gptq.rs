//! Calibration: the inputs, `--smooth`'s activation maxima and the
//! per-layer Hessians `--gptq` needs.
//!
//! Calibration inputs are generated from a template (the `--calib` /
//! `--inputs` bundle) with a fixed seed, so they differ from the evaluation
//! inputs but follow the model's own input distributions: token ids are
//! drawn uniformly from the embedding table's rows, float inputs (latents,
//! text embeddings, KV caches) from a normal with the template's mean and
//! standard deviation; masks and positions are kept.
//!
//! GPTQ streams: one pass of all calibration samples through the model,
//! node by node; each layer's `Σ x xᵀ` is accumulated from the inputs that
//! reach it through the layers before it, already quantized with GPTQ
//! (rotated, when the layer rotates), its weights are packed, and the
//! Hessian is dropped before the run moves on.
//!
//! The activation-aware scale search (`--scale-search` with calibration
//! inputs, without GPTQ) needs only the diagonal: each layer's per input
//! channel mean square, from one pass through the round-to-nearest model.

use crate::onnx::{import, OnnxModel};
use crate::run::read_inputs;
use lpc_ir::interp::{self, TensorValue};
use lpc_ir::Graph;
use lpc_passes::gptq::Hessian;
use lpc_passes::quant_policy::GptqWeights;
use lpc_passes::weights_prequantize::{self, Codes};
use lpc_passes::{canonicalize, PassManager, QuantConfig, RunOptions};
use lpc_runtime::hadamard;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

/// SplitMix64: a tiny, fully specified generator, so that calibration inputs
/// are byte-identical for a seed on every platform and version.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u = 1.0 - self.unit();
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// Rows of the constant table of a `Gather` that reads `input` as indices.
fn vocab(g: &Graph, name: &str) -> Option<usize> {
    let v = g
        .inputs
        .iter()
        .copied()
        .find(|&i| g.value(i).name == name)?;
    g.consumers(v).into_iter().find_map(|(n, k)| {
        let node = g.node(n);
        (node.op == "Gather" && k == 1)
            .then(|| g.constant(node.inputs[0]?)?.dims.first().copied())
            .flatten()
    })
}

/// `n` calibration samples shaped like `template`, from `seed`.
pub fn calibration_inputs(
    g: &Graph,
    template: &HashMap<String, TensorValue>,
    n: usize,
    seed: u64,
) -> Vec<HashMap<String, TensorValue>> {
    let mut rng = SplitMix(seed);
    let mut names: Vec<&String> = template.keys().collect();
    names.sort();
    (0..n)
        .map(|_| {
            names
                .iter()
                .map(|&name| {
                    let t = &template[name];
                    let v = if let (Some(_), Some(vs)) = (t.as_i64(), vocab(g, name)) {
                        let ids = (0..t.len())
                            .map(|_| (rng.next() % vs.max(1) as u64) as i64)
                            .collect();
                        TensorValue::i64(t.shape.clone(), ids)
                    } else if let Some(x) = t.as_f32() {
                        let m = x.iter().map(|&v| v as f64).sum::<f64>() / x.len().max(1) as f64;
                        let var = x.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>()
                            / x.len().max(1) as f64;
                        let y = (0..x.len())
                            .map(|_| (m + var.sqrt() * rng.normal()) as f32)
                            .collect();
                        TensorValue::with_dtype(t.dtype, t.shape.clone(), interp::Data::F(y))
                    } else {
                        t.clone()
                    };
                    (name.clone(), v)
                })
                .collect()
        })
        .collect()
}

/// The names of the quantized layers, in topological order.
fn layers(gc: &Graph, cfg: &QuantConfig) -> Vec<String> {
    let planned: std::collections::HashSet<lpc_ir::NodeId> =
        lpc_passes::quant_policy::plan(gc, cfg)
            .layers
            .into_iter()
            .filter(|l| l.formats.is_some())
            .map(|l| l.node)
            .collect();
    gc.topo_order()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| planned.contains(n))
        .map(|n| gc.node(n).name.clone())
        .collect()
}

/// Per input channel `max|x|` of every quantized layer, over the f32 model
/// run on the calibration inputs.
fn activation_maxima(
    gc: &Graph,
    cfg: &QuantConfig,
    samples: &[HashMap<String, TensorValue>],
) -> Result<HashMap<String, Vec<f32>>, String> {
    let layers: Vec<(String, lpc_ir::ValueId)> = lpc_passes::quant_policy::plan(gc, cfg)
        .layers
        .into_iter()
        .filter(|l| l.formats.is_some())
        .filter_map(|l| Some((gc.node(l.node).name.clone(), gc.node(l.node).inputs[0]?)))
        .collect();
    let mut out: HashMap<String, Vec<f32>> = HashMap::new();
    for s in samples {
        let (_, vals) = interp::run_capture(gc, s).map_err(|e| e.to_string())?;
        for (name, v) in &layers {
            let Some(x) = vals.get(v).or_else(|| s.get(&gc.value(*v).name)) else {
                continue;
            };
            let k = *x.shape.last().unwrap_or(&0);
            if k == 0 {
                continue;
            }
            let m = out.entry(name.clone()).or_insert_with(|| vec![0.0; k]);
            for row in x.to_f64().chunks_exact(k) {
                for (a, &b) in m.iter_mut().zip(row) {
                    *a = a.max(b.abs() as f32);
                }
            }
        }
    }
    Ok(out)
}

/// Fills in what the configuration's calibration-based methods need:
/// `--smooth`'s activation maxima (from the f32 model), then the GPTQ
/// Hessians (sequentially, see the module docs, on the smoothed model).
pub fn prepare(
    gc: &Graph,
    cfg: &mut QuantConfig,
    template: &HashMap<String, TensorValue>,
) -> Result<(), String> {
    prepare_with(gc, cfg, template, |_, _| {})
}

/// [`prepare`], showing `on_hessian` each layer's Hessian (by layer name)
/// before GPTQ uses and drops it.
pub fn prepare_with(
    gc: &Graph,
    cfg: &mut QuantConfig,
    template: &HashMap<String, TensorValue>,
    on_hessian: impl FnMut(&str, &Hessian),
) -> Result<(), String> {
    if let Some(sm) = cfg.smooth.clone().filter(|s| s.act_max.is_empty()) {
        let samples = calibration_inputs(gc, template, sm.samples.max(1), sm.seed);
        let act_max = activation_maxima(gc, cfg, &samples)?;
        cfg.smooth = Some(lpc_passes::smooth::SmoothConfig {
            act_max: Arc::new(act_max),
            ..sm
        });
    }
    if let Some(sc) = cfg
        .search_calibration
        .clone()
        .filter(|s| cfg.gptq.is_none() && s.importance.is_empty())
    {
        let samples = calibration_inputs(gc, template, sc.samples.max(1), sc.seed);
        let importance = search_importance(gc, cfg, &samples)?;
        cfg.search_calibration = Some(lpc_passes::quant_policy::SearchCalibration {
            importance: Arc::new(importance),
            ..sc
        });
    }
    let Some(gq_cfg) = cfg.gptq.clone().filter(|g| g.packed.0.is_empty()) else {
        return Ok(());
    };
    // A Hessian from fewer rows than inputs is singular and GPTQ overfits
    // it (measured: worse than round-to-nearest on the 1-token decode
    // fixture): raise the sample count until every layer sees at least
    // twice as many rows as it has inputs.
    let probe = calibration_inputs(gc, template, 1, gq_cfg.seed);
    let (_, vals) = interp::run_capture(gc, &probe[0]).map_err(|e| e.to_string())?;
    let (mut rows, mut width) = (usize::MAX, 0);
    for l in lpc_passes::quant_policy::plan(gc, cfg).layers {
        let Some(v) = gc.node(l.node).inputs[0].filter(|_| l.formats.is_some()) else {
            continue;
        };
        if let Some(x) = vals.get(&v).or_else(|| probe[0].get(&gc.value(v).name)) {
            let k = x.shape.last().copied().unwrap_or(1).max(1);
            rows = rows.min(x.len() / k);
            width = width.max(k);
        }
    }
    let mut n = gq_cfg.samples.max(1);
    if rows > 0 && rows != usize::MAX && n * rows < 2 * width {
        let m = (2 * width).div_ceil(rows);
        eprintln!(
            "gptq: {n} calibration samples give {} rows for layers {width} wide; using {m}",
            n * rows
        );
        n = m;
    }
    let samples = calibration_inputs(gc, template, n, gq_cfg.seed);
    let packed = calibrate(gc, cfg, &gq_cfg, &samples, on_hessian)?;
    cfg.gptq = Some(lpc_passes::quant_policy::Gptq {
        packed: Arc::new(packed),
        ..gq_cfg
    });
    Ok(())
}

/// The graph quantized by `cfg` with its weights still f32 behind their
/// `lpc.quantize` nodes, and the same graph with the weights packed.
fn quantized(gc: &Graph, cfg: &QuantConfig) -> Result<(Graph, Graph), String> {
    let pm = |passes| PassManager::new(passes, RunOptions::default());
    let mut gpre = gc.clone();
    pm(lpc_passes::quantize_insertion(cfg))
        .run(&mut gpre)
        .map_err(|e| e.to_string())?;
    let mut gq = gpre.clone();
    pm(lpc_passes::quantize_packing(cfg))
        .run(&mut gq)
        .map_err(|e| e.to_string())?;
    Ok((gpre, gq))
}

/// Calls `f` with each sample's input rows (of `k`) of the `lpc.qgemm`
/// `node`, rotated as its weight is.
fn layer_inputs(
    node: &lpc_ir::Node,
    operands: &[Vec<Option<&TensorValue>>],
    mut f: impl FnMut(&[f32]),
) -> Result<(), String> {
    let k = node.int("k").unwrap_or(0) as usize;
    let rot = node.int("rotate").unwrap_or(0).max(0) as usize;
    for ops in operands {
        let x = ops.first().copied().flatten().ok_or("no input")?;
        let mut x: Vec<f32> = x.to_f64().into_iter().map(|v| v as f32).collect();
        if k == 0 || !x.len().is_multiple_of(k) {
            return Err(format!("`{}`: the input is not rows of {k}", node.name));
        }
        if rot > 0 {
            for row in x.chunks_exact_mut(k) {
                hadamard::rotate_blocks(row, rot);
            }
        }
        f(&x);
    }
    Ok(())
}

/// Per input channel mean square of every quantized layer's input (as its
/// weight sees it), keyed by the layer's weight quantizers
/// (`{layer}/w{i}/quantize`), over the calibration samples run through the
/// round-to-nearest model.
fn search_importance(
    gc: &Graph,
    cfg: &QuantConfig,
    samples: &[HashMap<String, TensorValue>],
) -> Result<HashMap<String, Vec<f32>>, String> {
    let plain = QuantConfig {
        search_calibration: None,
        ..cfg.clone()
    };
    let (_, gq) = quantized(gc, &plain)?;
    let wanted: HashSet<String> = layers(gc, cfg).into_iter().collect();
    let mut out = HashMap::new();
    interp::run_lockstep(&gq, samples, |step| {
        let node = gq.node(step.node);
        if node.op != "lpc.qgemm" || !wanted.contains(&node.name) {
            return Ok(Vec::new());
        }
        let k = node.int("k").unwrap_or(0).max(0) as usize;
        let (mut sum, mut rows) = (vec![0f64; k], 0usize);
        layer_inputs(node, step.operands, |x| {
            for row in x.chunks_exact(k) {
                for (s, &v) in sum.iter_mut().zip(row) {
                    *s += v as f64 * v as f64;
                }
                rows += 1;
            }
        })?;
        let mean: Vec<f32> = sum
            .iter()
            .map(|s| (s / rows.max(1) as f64) as f32)
            .collect();
        for i in 0..node.int("parts").unwrap_or(1).max(1) {
            out.insert(format!("{}/w{i}/quantize", node.name), mean.clone());
        }
        Ok(Vec::new())
    })
    .map_err(|e| e.to_string())?;
    Ok(out)
}

/// GPTQ in one streaming pass: the calibration samples run together, node
/// by node, through the model with every weight rounded to nearest; when
/// they reach a quantized layer, its Hessian is accumulated from the inputs
/// that arrived (already through the GPTQ'd layers before it), its weights
/// are packed with GPTQ from the f32 originals (memory-mapped) and replace
/// the rounded ones for the rest of the run, and the Hessian is dropped.
/// Memory: the live activations of the samples, one layer's weight and
/// Hessian at a time, and the packed result.
fn calibrate(
    gc: &Graph,
    cfg: &QuantConfig,
    gq_cfg: &lpc_passes::quant_policy::Gptq,
    samples: &[HashMap<String, TensorValue>],
    mut on_hessian: impl FnMut(&str, &Hessian),
) -> Result<GptqWeights, String> {
    let rtn = QuantConfig {
        gptq: None,
        ..cfg.clone()
    };
    // The weights still f32 behind their `lpc.quantize` nodes (what GPTQ
    // packs from), and the rounded-to-nearest model the samples run through.
    let (gpre, gq) = quantized(gc, &rtn)?;
    let order = layers(gc, cfg);
    let wanted: HashSet<&str> = order.iter().map(String::as_str).collect();
    let quantizers: HashMap<&str, lpc_ir::NodeId> = gpre
        .node_ids()
        .filter(|&n| gpre.node(n).op == "lpc.quantize")
        .map(|n| (gpre.node(n).name.as_str(), n))
        .collect();
    let mut packed = HashMap::new();
    // Drawn on stderr when it is a terminal, hidden otherwise.
    let progress = indicatif::ProgressBar::new(order.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("gptq [{bar:30}] {pos}/{len} {msg}")
            .map(|s| s.progress_chars("#>-"))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    interp::run_lockstep(&gq, samples, |step| {
        let node = gq.node(step.node);
        if node.op != "lpc.qgemm" || !wanted.contains(node.name.as_str()) {
            return Ok(Vec::new());
        }
        let k = node.int("k").unwrap_or(0) as usize;
        let parts = node.int("parts").unwrap_or(1).max(1) as usize;
        progress.set_message(node.name.clone());
        let mut h = Hessian::new(k);
        layer_inputs(node, step.operands, |x| h.add_rows(x))?;
        on_hessian(&node.name, &h);
        let mut replace = Vec::new();
        for i in 0..parts {
            let name = format!("{}/w{i}/quantize", node.name);
            // Weights that are not constants keep their run-time quantizer.
            let Some(&qn) = quantizers.get(name.as_str()) else {
                continue;
            };
            let codes = Codes::Gptq(&h, gq_cfg.options);
            let Some(p) = weights_prequantize::pack(&gpre, qn, codes)? else {
                continue;
            };
            let old = step
                .operands
                .first()
                .and_then(|o| o.get(1 + i).copied().flatten());
            if old.map(|o| &o.shape) != Some(&p.packed.dims) {
                return Err(format!(
                    "`{name}`: the packed weight is not operand {}",
                    1 + i
                ));
            }
            replace.push((1 + i, TensorValue::from_tensor(&p.packed)));
            packed.insert(name, p.packed.data.to_vec());
        }
        progress.inc(1);
        Ok(replace)
    })
    .map_err(|e| e.to_string())?;
    progress.finish_and_clear();
    Ok(GptqWeights(packed))
}

/// [`prepare_model`] when the configuration needs calibration. Without a
/// template (`flag` names the option that gives one), the scale search
/// weighs every weight alike, and `--gptq`/`--smooth` are an error.
pub fn prepare_if_needed(
    model: &Path,
    cfg: &mut QuantConfig,
    template: Option<&Path>,
    flag: &str,
) -> Result<(), String> {
    if template.is_none() {
        cfg.search_calibration = None;
    }
    if !needs_calibration(cfg) {
        return Ok(());
    }
    let t = template.ok_or_else(|| {
        format!("--gptq/--smooth need {flag} (a template for the calibration inputs)")
    })?;
    prepare_model(model, cfg, t)
}

/// [`prepare`] for a model file, with the template from `inputs`.
pub fn prepare_model(model: &Path, cfg: &mut QuantConfig, inputs: &Path) -> Result<(), String> {
    if !needs_calibration(cfg) {
        return Ok(());
    }
    let e = |e: String| format!("{}: {e}", model.display());
    let mut gc = import(&OnnxModel::load(model).map_err(|x| e(x.to_string()))?)
        .map_err(|x| e(x.to_string()))?;
    PassManager::new(canonicalize(), RunOptions::default())
        .run(&mut gc)
        .map_err(|x| e(x.to_string()))?;
    let template = read_inputs(&gc, Some(inputs), &[]).map_err(|x| x.to_string())?;
    prepare(&gc, cfg, &template).map_err(e)
}

/// Does the configuration use calibration data (`--gptq`, `--smooth`, the
/// activation-aware `--scale-search`)?
pub fn needs_calibration(cfg: &QuantConfig) -> bool {
    cfg.gptq.is_some() || cfg.smooth.is_some() || cfg.search_calibration.is_some()
}
