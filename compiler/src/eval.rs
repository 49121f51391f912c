//! `lpc eval`: what quantization costs, per layer and end to end, against
//! the f32 model on given inputs. The same numbers go to a JSON report.

use crate::onnx::{import, OnnxError, OnnxModel};
use crate::run::{read_inputs, RunError};
use lpc_ir::interp::{self, quant::format_of, OpCtx, TensorValue};
use lpc_ir::{Graph, NodeId};
use lpc_passes::{canonicalize, PassManager, QuantConfig, RunOptions};
use lpc_runtime::hadamard;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum EvalError {
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("{0}")]
    Other(String),
}

#[derive(Debug, Serialize)]
pub struct LayerReport {
    pub name: String,
    pub weights: String,
    pub activations: String,
    /// How the layer was quantized: `rtn` (round to nearest, the spec's
    /// rule), plus `hadamard`, `pow2-scale`, `scale-search`, `smooth`,
    /// `gptq` where applied.
    pub method: String,
    pub rotate: i64,
    pub weight_sqnr_db: f64,
    pub output_sqnr_db: f64,
    pub output_cosine: f64,
    pub max_abs_err: f64,
    pub bytes_before: usize,
    pub bytes_after: usize,
}

#[derive(Debug, Serialize)]
pub struct OutputReport {
    pub name: String,
    pub sqnr_db: f64,
    pub max_abs_err: f64,
    /// Mean KL(p_f32 || p_quantized) of the softmax over the last axis (logits only).
    pub kl_divergence: Option<f64>,
    /// Fraction of positions whose argmax agrees with f32 (logits only).
    pub top1_agreement: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub model: String,
    pub config: String,
    pub layers: Vec<LayerReport>,
    pub outputs: Vec<OutputReport>,
    /// Bits per weight over every linear layer (quantized ones as packed,
    /// the others at their stored width).
    pub effective_bits_per_weight: f64,
    /// `--sensitivity`: each layer quantized alone, most sensitive first.
    pub sensitivity: Option<Vec<Sensitivity>>,
    /// `--auto-mixed`: the layers kept in the wider format, and whether the
    /// target was met.
    pub auto_mixed: Option<AutoMixed>,
    /// Each enabled method's effect: the metrics without it (everything
    /// else unchanged) and with it.
    pub methods: Option<Vec<MethodEffect>>,
}

#[derive(Debug, Serialize, Clone)]
pub struct MethodEffect {
    pub method: String,
    pub layer_output_sqnr_db_without: f64,
    pub layer_output_sqnr_db_with: f64,
    /// End to end, on the first output.
    pub output_sqnr_db_without: f64,
    pub output_sqnr_db_with: f64,
}

/// Mean output SQNR over the quantized layers.
pub fn mean_layer_sqnr(r: &Report) -> f64 {
    r.layers.iter().map(|l| l.output_sqnr_db).sum::<f64>() / r.layers.len().max(1) as f64
}

/// Re-evaluates with each enabled method turned off in turn (GPTQ weights
/// recomputed where the change alters what GPTQ sees).
pub fn method_effects(
    model: &Path,
    inputs: &Path,
    cfg: &QuantConfig,
    with: &Report,
) -> Result<Vec<MethodEffect>, EvalError> {
    let fresh = |c: &mut QuantConfig| {
        if let Some(g) = c.gptq.as_mut() {
            g.packed = Default::default();
        }
        if let Some(s) = c.search_calibration.as_mut() {
            s.importance = Default::default();
        }
    };
    let hif8 = [cfg.weights, cfg.activations]
        .iter()
        .flatten()
        .any(|f| f.block_len() == 1);
    let four = cfg.weights.is_some_and(|f| f.block_len() > 1);
    let mut variants: Vec<(&str, QuantConfig)> = Vec::new();
    let mut off = |name, on: bool, f: &dyn Fn(&mut QuantConfig)| {
        if on {
            let mut c = cfg.clone();
            f(&mut c);
            variants.push((name, c));
        }
    };
    off("hadamard", cfg.rotate, &|c| {
        c.rotate = false;
        fresh(c)
    });
    off("pow2-scale", cfg.hif8_scale && hif8, &|c| {
        c.hif8_scale = false;
        fresh(c)
    });
    off("scale-search", cfg.scale_search && four, &|c| {
        c.scale_search = false;
        c.search_calibration = None;
        fresh(c)
    });
    off("smooth", cfg.smooth.is_some(), &|c| {
        c.smooth = None;
        fresh(c)
    });
    off("gptq", cfg.gptq.is_some(), &|c| c.gptq = None);
    let first = |r: &Report| r.outputs.first().map_or(f64::NAN, |o| o.sqnr_db);
    variants
        .into_iter()
        .map(|(name, c)| {
            let without = evaluate(model, inputs, &c)?;
            Ok(MethodEffect {
                method: name.to_string(),
                layer_output_sqnr_db_without: mean_layer_sqnr(&without),
                layer_output_sqnr_db_with: mean_layer_sqnr(with),
                output_sqnr_db_without: first(&without),
                output_sqnr_db_with: first(with),
            })
        })
        .collect()
}

#[derive(Debug, Serialize, Clone)]
pub struct Sensitivity {
    pub name: String,
    /// End-to-end SQNR (first output) with only this layer quantized.
    pub output_sqnr_db: f64,
}

#[derive(Debug, Serialize, Clone)]
pub struct AutoMixed {
    pub target: String,
    pub wide_format: String,
    pub wide_layers: Vec<String>,
    pub met: bool,
}

/// (SQNR dB, cosine, max abs error) of `q` against `r`.
pub fn compare(r: &[f64], q: &[f64]) -> (f64, f64, f64) {
    let (mut s, mut n, mut dot, mut qq, mut mx) = (0f64, 0f64, 0f64, 0f64, 0f64);
    for (&a, &b) in r.iter().zip(q) {
        s += a * a;
        n += (a - b) * (a - b);
        dot += a * b;
        qq += b * b;
        mx = mx.max((a - b).abs());
    }
    (10.0 * (s / n).log10(), dot / (s * qq).sqrt(), mx)
}

fn softmax(row: &[f64]) -> Vec<f64> {
    let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = row.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

fn argmax(row: &[f64]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv {
                (i, v)
            } else {
                (bi, bv)
            }
        })
        .0
}

/// The original weights of a canonical linear as `[N, K]` f32 rows, rotated
/// like the quantized layer.
/// The layer's f32 weights as rows along K (scaled by the smoothing
/// factors, then rotated, as the quantizer saw them).
fn weight_rows(
    g: &Graph,
    lin: NodeId,
    parts: usize,
    rotate: usize,
    smooth: Option<&[f32]>,
) -> Option<(Vec<f64>, usize)> {
    let node = g.node(lin);
    let tr = node.int("transposed") == Some(1);
    let mut rows = Vec::new();
    let mut bytes = 0;
    for p in 0..parts {
        let t = g.constant(node.inputs[1 + p]?)?;
        bytes += t.data.len();
        let v = t.to_f64_vec();
        let (r, c) = (t.dims[0], t.dims[1]);
        let (k, n) = if tr { (c, r) } else { (r, c) };
        for j in 0..n {
            let mut row: Vec<f32> = (0..k)
                .map(|i| {
                    let w = if tr { v[j * k + i] } else { v[i * n + j] } as f32;
                    smooth.map_or(w, |s| w * s[i])
                })
                .collect();
            if rotate > 0 {
                hadamard::rotate_blocks(&mut row, rotate);
            }
            rows.extend(row.into_iter().map(|x| x as f64));
        }
    }
    Some((rows, bytes))
}

pub fn evaluate(model: &Path, inputs: &Path, cfg: &QuantConfig) -> Result<Report, EvalError> {
    let mut gc = import(&OnnxModel::load(model)?)?;
    let e = |e: lpc_passes::PassError| EvalError::Other(format!("{}: {e}", model.display()));
    PassManager::new(canonicalize(), RunOptions::default())
        .run(&mut gc)
        .map_err(e)?;
    let ins = read_inputs(&gc, Some(inputs), &[])?;
    let mut cfg = cfg.clone();
    crate::gptq::prepare(&gc, &mut cfg, &ins).map_err(EvalError::Other)?;
    let cfg = &cfg;
    let mut gq = gc.clone();
    PassManager::new(lpc_passes::quantize(cfg), RunOptions::default())
        .run(&mut gq)
        .map_err(e)?;
    let ie = |e: interp::InterpError| EvalError::Other(format!("{}: {e}", model.display()));
    let (outs_f, vals_f) = interp::run_capture(&gc, &ins).map_err(ie)?;
    let outs_q = interp::run(&gq, &ins).map_err(ie)?;

    let linears: HashMap<String, NodeId> = gc
        .node_ids()
        .filter(|&n| gc.node(n).op == "lpc.linear")
        .map(|n| (gc.node(n).name.clone(), n))
        .collect();
    let mut layers = Vec::new();
    let kernel = interp::kernel("lpc.qgemm").expect("qgemm kernel");
    for n in gq.topo_order().unwrap_or_default() {
        let q = gq.node(n);
        if q.op != "lpc.qgemm" {
            continue;
        }
        let Some(&lin) = linears.get(&q.name) else {
            continue;
        };
        let ln = gc.node(lin);
        let value = |v: lpc_ir::ValueId| -> Option<TensorValue> {
            vals_f
                .get(&v)
                .cloned()
                .or_else(|| ins.get(&gc.value(v).name).cloned())
                .or_else(|| gc.constant(v).map(TensorValue::from_tensor))
        };
        let (Some(x), Some(y)) = (value(ln.inputs[0].expect("input")), value(ln.outputs[0])) else {
            continue;
        };
        // Smoothed layers see `x / s` (folded into the norm) and `W · s`.
        let smooth: Option<Vec<f32>> = match q.attr("smooth") {
            Some(lpc_ir::Attr::Floats(f)) => Some(f.clone()),
            _ => None,
        };
        let x = match &smooth {
            Some(s) if x.shape.last() == Some(&s.len()) => {
                let v: Vec<f32> = x
                    .to_f64()
                    .chunks_exact(s.len())
                    .flat_map(|r| r.iter().zip(s).map(|(a, b)| (*a / *b as f64) as f32))
                    .collect();
                TensorValue::f32(x.shape.clone(), v)
            }
            _ => x,
        };
        let parts = q.int("parts").unwrap_or(1).max(1) as usize;
        // The layer alone: without its fused epilogue.
        let mut layer = q.clone();
        layer.attrs.remove("activation");
        layer.attrs.insert("residual".into(), lpc_ir::Attr::Int(0));
        let wscaled = q.int("wscale").unwrap_or(0) != 0;
        let n_ops = 1 + parts * (1 + wscaled as usize) + q.int("bias").unwrap_or(0) as usize;
        let consts: Vec<Option<TensorValue>> = q.inputs[1..n_ops]
            .iter()
            .map(|v| v.and_then(|v| gq.constant(v)).map(TensorValue::from_tensor))
            .collect();
        let mut operands: Vec<Option<&TensorValue>> = vec![Some(&x)];
        operands.extend(consts.iter().map(Option::as_ref));
        let yq = kernel(&OpCtx {
            node: &layer,
            inputs: operands,
            opset: 0,
        })
        .map_err(|m| EvalError::Other(format!("`{}`: {m}", q.name)))?;
        let (osq, cos, mx) = compare(&y.to_f64(), &yq[0].to_f64());
        let rotate = q.int("rotate").unwrap_or(0);
        let k = q.int("k").unwrap_or(0) as usize;
        let (wrows, before) = weight_rows(&gc, lin, parts, rotate as usize, smooth.as_deref())
            .ok_or_else(|| EvalError::Other(format!("`{}`: weights", q.name)))?;
        let wf = format_of(q.string("wformat").unwrap_or("none"), q.string("wmode"))
            .map_err(EvalError::Other)?
            .ok_or_else(|| EvalError::Other("weights not quantized".into()))?;
        let mut deq = Vec::new();
        let mut after = 0;
        for (i, c) in consts.iter().take(parts).enumerate() {
            let t = c
                .as_ref()
                .ok_or_else(|| {
                    EvalError::Other(format!("`{}`: weights are not constants", q.name))
                })?
                .to_tensor();
            after += t.data.len();
            let l = wf
                .layout(&[t.dims[0], k], -1, true)
                .map_err(|e| EvalError::Other(e.to_string()))?;
            let mut w = wf
                .dequantize(&t.data, &l)
                .map_err(|e| EvalError::Other(e.to_string()))?;
            if wscaled {
                let e = consts[parts + i]
                    .as_ref()
                    .map(|e| e.to_f64())
                    .unwrap_or_default();
                let e: Vec<i32> = e.iter().map(|&v| v as i32).collect();
                after += e.len();
                lpc_runtime::formats::rowscale::unscale_rows(&mut w, &l, &e);
            }
            deq.extend(w.into_iter().map(|v| v as f64));
        }
        let (wsq, _, _) = compare(&wrows, &deq);
        let fmt = |f: &str, m: &str| {
            if f == "none" {
                "f32".to_string()
            } else {
                format!("{f} ({m})")
            }
        };
        let mut method = vec!["rtn"];
        if rotate > 0 {
            method.push("hadamard");
        }
        if q.int("wscale") == Some(1) || q.string("ascale") == Some("pow2") {
            method.push("pow2-scale");
        }
        if cfg.scale_search && wf.block_len() > 1 {
            method.push("scale-search");
        }
        if smooth.is_some() {
            method.push("smooth");
        }
        if cfg.gptq.as_ref().is_some_and(|g| g.covers(&q.name)) {
            method.push("gptq");
        }
        layers.push(LayerReport {
            method: method.join("+"),
            name: q.name.clone(),
            weights: fmt(
                q.string("wformat").unwrap_or(""),
                q.string("wmode").unwrap_or(""),
            ),
            activations: fmt(
                q.string("aformat").unwrap_or("none"),
                q.string("amode").unwrap_or(""),
            ),
            rotate,
            weight_sqnr_db: wsq,
            output_sqnr_db: osq,
            output_cosine: cos,
            max_abs_err: mx,
            bytes_before: before,
            bytes_after: after,
        });
    }
    let mut outputs = Vec::new();
    for ((&o, f), q) in gc.outputs.iter().zip(&outs_f).zip(&outs_q) {
        let name = gc.value(o).name.clone();
        let (r, qv) = (f.to_f64(), q.to_f64());
        let (sq, _, mx) = compare(&r, &qv);
        let (mut kl, mut top1) = (None, None);
        if name.contains("logits") {
            if let Some(&w) = f.shape.last().filter(|&&w| w > 0) {
                let (mut klsum, mut agree, rows) = (0.0, 0usize, r.len() / w);
                for i in 0..rows {
                    let (a, b) = (&r[i * w..(i + 1) * w], &qv[i * w..(i + 1) * w]);
                    let (p, pq) = (softmax(a), softmax(b));
                    klsum += p
                        .iter()
                        .zip(&pq)
                        .map(|(x, y)| if *x > 0.0 { x * (x / y).ln() } else { 0.0 })
                        .sum::<f64>();
                    agree += (argmax(a) == argmax(b)) as usize;
                }
                kl = Some(klsum / rows.max(1) as f64);
                top1 = Some(agree as f64 / rows.max(1) as f64);
            }
        }
        outputs.push(OutputReport {
            name,
            sqnr_db: sq,
            max_abs_err: mx,
            kl_divergence: kl,
            top1_agreement: top1,
        });
    }
    // Effective bits per weight over all linear layers.
    let mut packed: HashMap<&str, usize> = layers
        .iter()
        .map(|l| (l.name.as_str(), l.bytes_after))
        .collect();
    // Unquantized layers in bf16 (`bf16-linear`): their pair constants.
    for n in gq.node_ids() {
        let node = gq.node(n);
        if node.op == "lpc.linear" && node.int("bf16") == Some(1) {
            let parts = node.int("parts").unwrap_or(1).max(1) as usize;
            let bytes = node.inputs[1..1 + parts]
                .iter()
                .filter_map(|v| v.and_then(|v| gq.constant(v)))
                .map(|t| t.data.len())
                .sum();
            packed.insert(node.name.as_str(), bytes);
        }
    }
    let (mut bits, mut params) = (0f64, 0f64);
    for n in gc.node_ids().filter(|&n| gc.node(n).op == "lpc.linear") {
        let node = gc.node(n);
        let parts = node.int("parts").unwrap_or(1).max(1) as usize;
        let ws: Vec<&lpc_ir::Tensor> = node.inputs[1..1 + parts]
            .iter()
            .filter_map(|v| v.and_then(|v| gc.constant(v)))
            .collect();
        let count: usize = ws.iter().map(|t| t.len()).sum();
        let bytes = packed
            .get(node.name.as_str())
            .copied()
            .unwrap_or_else(|| ws.iter().map(|t| t.data.len()).sum());
        bits += bytes as f64 * 8.0;
        params += count as f64;
    }
    Ok(Report {
        model: model.display().to_string(),
        config: crate::quant_args::describe(cfg).trim_end().to_string(),
        layers,
        outputs,
        effective_bits_per_weight: if params > 0.0 { bits / params } else { 0.0 },
        sensitivity: None,
        auto_mixed: None,
        methods: None,
    })
}

/// `cfg` restricted to the named layers (each with the given format); every
/// other layer stays f32.
fn only(
    cfg: &QuantConfig,
    layers: &[(String, Option<lpc_runtime::formats::Format>)],
) -> QuantConfig {
    let exact =
        |n: &str| regex::Regex::new(&format!("^{}$", regex::escape(n))).expect("escaped regex");
    QuantConfig {
        exclude: Some(vec![regex::Regex::new(".*").expect("regex")]),
        overrides: layers.iter().map(|(n, f)| (exact(n), *f)).collect(),
        quantize_all: false,
        ..cfg.clone()
    }
}

/// Each layer of the plan quantized alone, ranked by its end-to-end SQNR
/// (most sensitive first).
pub fn sensitivity(
    model: &Path,
    inputs: &Path,
    cfg: &QuantConfig,
    base: &Report,
) -> Result<Vec<Sensitivity>, EvalError> {
    let mut out = Vec::new();
    for l in &base.layers {
        let r = evaluate(model, inputs, &only(cfg, &[(l.name.clone(), cfg.weights)]))?;
        out.push(Sensitivity {
            name: l.name.clone(),
            output_sqnr_db: r.outputs.first().map_or(f64::NAN, |o| o.sqnr_db),
        });
    }
    out.sort_by(|a, b| {
        a.output_sqnr_db
            .total_cmp(&b.output_sqnr_db)
            .then(a.name.cmp(&b.name))
    });
    Ok(out)
}

/// A target on the first output: `sqnr>=DB`, `kl<=X` or `top1>=FRACTION`.
pub fn parse_target(t: &str) -> Result<(String, f64), String> {
    for (m, op) in [("sqnr", ">="), ("kl", "<="), ("top1", ">=")] {
        if let Some(v) = t.strip_prefix(m).and_then(|r| r.strip_prefix(op)) {
            return v
                .parse()
                .map(|x| (m.to_string(), x))
                .map_err(|_| format!("--auto-mixed {t}: bad number `{v}`"));
        }
    }
    Err(format!(
        "--auto-mixed {t}: expected sqnr>=DB, kl<=X or top1>=FRACTION"
    ))
}

fn meets(r: &Report, metric: &str, v: f64) -> bool {
    let Some(o) = r.outputs.first() else {
        return false;
    };
    match metric {
        "sqnr" => o.sqnr_db >= v,
        "kl" => o.kl_divergence.is_some_and(|k| k <= v),
        _ => o.top1_agreement.is_some_and(|t| t >= v),
    }
}

/// Keeps the most sensitive layers in `wide` (a format, or `None` for f32)
/// one by one until the target holds; the final report records the choice.
/// `cfg` with the named layers in the `wide` format (`None`: f32), ahead of
/// its own overrides. What calibration computed for those layers in the
/// narrow format (GPTQ codes, search importances) is dropped: they get the
/// wide format's round to nearest; the other layers keep theirs.
pub fn with_wide_layers(
    cfg: &QuantConfig,
    layers: &[String],
    wide: Option<lpc_runtime::formats::Format>,
) -> QuantConfig {
    let exact =
        |n: &str| regex::Regex::new(&format!("^{}$", regex::escape(n))).expect("escaped regex");
    // Calibration results are keyed by weight quantizer, `{layer}/w{i}/quantize`.
    let kept = |key: &String| {
        !layers.iter().any(|n| {
            key.strip_prefix(n.as_str())
                .is_some_and(|r| r.starts_with("/w"))
        })
    };
    let mut c = QuantConfig {
        overrides: layers
            .iter()
            .map(|n| (exact(n), wide))
            .chain(cfg.overrides.iter().cloned())
            .collect(),
        ..cfg.clone()
    };
    fn keep<V: Clone>(
        m: &HashMap<String, V>,
        kept: impl Fn(&String) -> bool,
    ) -> HashMap<String, V> {
        m.iter()
            .filter(|(k, _)| kept(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
    if let Some(g) = c.gptq.as_mut() {
        let packed = keep(&g.packed.0, kept);
        g.packed = std::sync::Arc::new(lpc_passes::quant_policy::GptqWeights(packed));
    }
    if let Some(s) = c.search_calibration.as_mut() {
        s.importance = std::sync::Arc::new(keep(&s.importance, kept));
    }
    c
}

pub fn auto_mixed(
    model: &Path,
    inputs: &Path,
    cfg: &QuantConfig,
    target: &str,
    wide: Option<lpc_runtime::formats::Format>,
) -> Result<Report, EvalError> {
    let (metric, v) = parse_target(target).map_err(EvalError::Other)?;
    let base = evaluate(model, inputs, cfg)?;
    let ranked = sensitivity(model, inputs, cfg, &base)?;
    let mut wide_layers: Vec<String> = Vec::new();
    let mut report = base;
    let mut met = meets(&report, &metric, v);
    for s in &ranked {
        if met {
            break;
        }
        wide_layers.push(s.name.clone());
        report = evaluate(model, inputs, &with_wide_layers(cfg, &wide_layers, wide))?;
        met = meets(&report, &metric, v);
    }
    report.sensitivity = Some(ranked);
    report.auto_mixed = Some(AutoMixed {
        target: target.to_string(),
        wide_format: wide.map_or("f32".to_string(), |f| f.to_string()),
        wide_layers,
        met,
    });
    Ok(report)
}

pub fn table(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{}", r.config);
    let _ = writeln!(
        o,
        "{:<48} {:<18} {:<18} {:>4} {:>8} {:>8} {:>8} {:>10} {:>9} {:>9}",
        "layer",
        "weights",
        "activations",
        "rot",
        "W SQNR",
        "out SQNR",
        "cosine",
        "max |err|",
        "bytes",
        "packed"
    );
    for l in &r.layers {
        let name = if l.name.len() > 48 {
            format!("..{}", &l.name[l.name.len() - 46..])
        } else {
            l.name.clone()
        };
        let _ = writeln!(
            o,
            "{:<48} {:<18} {:<18} {:>4} {:>8.2} {:>8.2} {:>8.5} {:>10.3e} {:>9} {:>9}",
            name,
            l.weights,
            l.activations,
            l.rotate,
            l.weight_sqnr_db,
            l.output_sqnr_db,
            l.output_cosine,
            l.max_abs_err,
            l.bytes_before,
            l.bytes_after
        );
    }
    if !r.layers.is_empty() {
        let n = r.layers.len() as f64;
        let _ = writeln!(
            o,
            "mean over {} layers: W SQNR {:.2} dB, output SQNR {:.2} dB",
            r.layers.len(),
            r.layers.iter().map(|l| l.weight_sqnr_db).sum::<f64>() / n,
            r.layers.iter().map(|l| l.output_sqnr_db).sum::<f64>() / n
        );
    }
    let _ = writeln!(
        o,
        "effective bits per weight (all linear layers): {:.3}",
        r.effective_bits_per_weight
    );
    if let Some(sens) = &r.sensitivity {
        let _ = writeln!(
            o,
            "sensitivity (each layer quantized alone; end-to-end SQNR, most sensitive first):"
        );
        for s in sens {
            let _ = writeln!(o, "  {:>8.2} dB  {}", s.output_sqnr_db, s.name);
        }
    }
    if let Some(ms) = &r.methods {
        for m in ms {
            let _ = writeln!(
                o,
                "method {}: mean layer output SQNR {:.2} -> {:.2} dB, output SQNR {:.2} -> {:.2} dB (without -> with)",
                m.method,
                m.layer_output_sqnr_db_without,
                m.layer_output_sqnr_db_with,
                m.output_sqnr_db_without,
                m.output_sqnr_db_with
            );
        }
    }
    if let Some(a) = &r.auto_mixed {
        let _ = writeln!(
            o,
            "auto-mixed {}: {} layer(s) kept in {}{}: {}",
            a.target,
            a.wide_layers.len(),
            a.wide_format,
            if a.met { "" } else { " (target NOT met)" },
            a.wide_layers.join(", ")
        );
    }
    for out in &r.outputs {
        let mut line = format!(
            "output {}: SQNR {:.2} dB, max |err| {:.3e}",
            out.name, out.sqnr_db, out.max_abs_err
        );
        if let (Some(kl), Some(t)) = (out.kl_divergence, out.top1_agreement) {
            let _ = write!(line, ", KL {kl:.3e}, top-1 agreement {:.1}%", t * 100.0);
        }
        let _ = writeln!(o, "{line}");
    }
    o
}

/// Prints the table and writes the JSON report atomically.
pub fn finish(r: &Report, report: Option<&Path>) -> Result<String, EvalError> {
    let mut text = table(r);
    if let Some(p) = report {
        let json =
            serde_json::to_string_pretty(r).map_err(|e| EvalError::Other(e.to_string()))? + "\n";
        crate::atomic::write(p, json.as_bytes())
            .map_err(|e| EvalError::Other(format!("writing {}: {e}", p.display())))?;
        let _ = writeln!(text, "wrote {}", p.display());
    }
    Ok(text)
}

/// Runs the evaluation; prints the table, writes the JSON report atomically.
pub fn eval(
    model: &Path,
    inputs: &Path,
    cfg: &QuantConfig,
    report: Option<&Path>,
) -> Result<String, EvalError> {
    let mut r = evaluate(model, inputs, cfg)?;
    r.methods = Some(method_effects(model, inputs, cfg, &r)?);
    finish(&r, report)
}
