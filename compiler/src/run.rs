//! `lpc run`: execute a model in the reference interpreter on `.npy` inputs.

use crate::npy;
use crate::onnx::{import, OnnxError, OnnxModel};
use lpc_ir::interp::{self, InterpError, TensorValue};
use lpc_ir::{DType, Graph, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error(transparent)]
    Npy(#[from] npy::NpyError),
    #[error("{model}: {source}")]
    Interp {
        model: String,
        #[source]
        source: InterpError,
    },
    #[error("{0}")]
    Usage(String),
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Converts a `.npy` array to an interpreter value.
pub fn value_from_npy(a: &npy::NpyArray) -> TensorValue {
    let t =
        Tensor::new(a.dtype, a.shape.clone(), a.data.clone().into()).expect("npy checked its size");
    TensorValue::from_tensor(&t)
}

/// Reads the graph's inputs: `dir/<name>.npy` for each input (or the arrays
/// of a `.npz` bundle when `dir` is one), overridden by `NAME=FILE` pairs.
pub fn read_inputs(
    g: &Graph,
    dir: Option<&Path>,
    pairs: &[(String, PathBuf)],
) -> Result<HashMap<String, TensorValue>, RunError> {
    let names: Vec<String> = g.inputs.iter().map(|&i| g.value(i).name.clone()).collect();
    read_inputs_named(&names, dir, pairs)
}

/// As [`read_inputs`], for a list of input names.
pub fn read_inputs_named(
    names: &[String],
    dir: Option<&Path>,
    pairs: &[(String, PathBuf)],
) -> Result<HashMap<String, TensorValue>, RunError> {
    let mut out = HashMap::new();
    for (name, file) in pairs {
        if !names.contains(name) {
            return Err(RunError::Usage(format!(
                "--input {name}: the model has no input `{name}`"
            )));
        }
        out.insert(name.clone(), value_from_npy(&npy::read(file)?));
    }
    let bundle: Option<HashMap<String, npy::NpyArray>> = match dir {
        Some(d) if d.extension().is_some_and(|e| e == "npz") => {
            Some(npy::read_npz(d)?.into_iter().collect())
        }
        _ => None,
    };
    for name in names {
        if out.contains_key(name) {
            continue;
        }
        if let Some(b) = &bundle {
            let a = b.get(name).ok_or_else(|| {
                RunError::Usage(format!(
                    "{}: no array `{name}` for input `{name}`",
                    dir.expect("bundle").display()
                ))
            })?;
            out.insert(name.clone(), value_from_npy(a));
            continue;
        }
        let Some(dir) = dir else {
            return Err(RunError::Usage(format!(
                "no value for input `{name}` (use --inputs DIR or --input {name}=FILE)"
            )));
        };
        out.insert(
            name.clone(),
            value_from_npy(&npy::read(&dir.join(format!("{name}.npy")))?),
        );
    }
    Ok(out)
}

/// Run times: median, min and max over the timed runs.
#[derive(Clone, Debug)]
pub struct Timing {
    pub median: std::time::Duration,
    pub min: std::time::Duration,
    pub max: std::time::Duration,
    /// A `--profile` library's time per node over the runs ("" otherwise).
    pub profile: String,
}

impl Timing {
    pub fn once(d: std::time::Duration) -> Self {
        Self {
            median: d,
            min: d,
            max: d,
            profile: String::new(),
        }
    }
}

/// Loads a compiled library (`lpc compile -o NAME.so`) and runs it; with
/// `repeat > 1`, once to warm up and then `repeat` timed runs, each after
/// flushing the caches when `cold` (weights then come from DRAM, as they do
/// for a model larger than the caches).
pub fn run_native(
    lib: &Path,
    dir: Option<&Path>,
    pairs: &[(String, PathBuf)],
    threads: i32,
    repeat: usize,
    cold: bool,
) -> Result<(Vec<(String, TensorValue)>, Timing), RunError> {
    let m = crate::native::NativeModel::load(lib, threads).map_err(RunError::Usage)?;
    let names: Vec<String> = m.inputs.iter().map(|i| i.0.clone()).collect();
    let mut vals = read_inputs_named(&names, dir, pairs)?;
    // Converted once: the timed runs measure the library alone.
    let ins: Vec<lpc_ir::Tensor> = names
        .iter()
        .map(|n| {
            vals.remove(n)
                .expect("read_inputs_named fills every input")
                .to_tensor()
        })
        .collect();
    let mut times = Vec::new();
    let mut outs = Vec::new();
    let timed = repeat.max(1);
    let mut flush = cold.then(lpc_rt::cache::CacheFlush::new);
    for i in 0..timed + usize::from(repeat > 1) {
        if let Some(f) = flush.as_mut() {
            f.run();
            // As after the layers before it: the workers spin.
            m.wake();
        }
        let t = std::time::Instant::now();
        outs = m.run_tensors(&ins).map_err(RunError::Usage)?;
        if repeat <= 1 || i > 0 {
            times.push(t.elapsed());
        }
    }
    times.sort();
    let timing = Timing {
        median: times[times.len() / 2],
        min: times[0],
        max: times[times.len() - 1],
        profile: m.profile().unwrap_or_default(),
    };
    Ok((
        m.outputs
            .iter()
            .map(|o| o.0.clone())
            .zip(outs.iter().map(TensorValue::from_tensor))
            .collect(),
        timing,
    ))
}

/// Loads, imports and runs a model (quantized as `lpc compile` would when
/// `quant` is given); outputs by name, in graph order.
pub fn run_model(
    model: &Path,
    dir: Option<&Path>,
    pairs: &[(String, PathBuf)],
    quant: Option<&lpc_passes::QuantConfig>,
) -> Result<Vec<(String, TensorValue)>, RunError> {
    let mut g = import(&OnnxModel::load(model)?)?;
    if let Some(q) = quant {
        let pm = lpc_passes::PassManager::new(
            crate::compile::pipeline(Some(q)),
            lpc_passes::RunOptions::default(),
        );
        pm.run(&mut g)
            .map_err(|e| RunError::Usage(format!("{}: {e}", model.display())))?;
    }
    let inputs = read_inputs(&g, dir, pairs)?;
    let outs = interp::run(&g, &inputs).map_err(|source| RunError::Interp {
        model: model.display().to_string(),
        source,
    })?;
    Ok(g.outputs
        .iter()
        .map(|&o| g.value(o).name.clone())
        .zip(outs)
        .collect())
}

/// Writes outputs as `<dir>/<name>.npy`, each atomically, or as one `.npz`
/// bundle when `dir` ends in `.npz`.
pub fn write_outputs(dir: &Path, outs: &[(String, TensorValue)]) -> Result<Vec<PathBuf>, RunError> {
    // numpy has no 4-bit type: such outputs are written as i8 / u8 values.
    let arrays: Vec<(String, DType, Vec<usize>, Vec<u8>)> = outs
        .iter()
        .map(|(n, v)| match v.dtype {
            DType::I4 | DType::U4 => {
                let d = if v.dtype == DType::I4 {
                    DType::I8
                } else {
                    DType::U8
                };
                (
                    n.clone(),
                    d,
                    v.shape.clone(),
                    v.to_f64().iter().map(|&x| x as i64 as u8).collect(),
                )
            }
            _ => {
                let t = v.to_tensor();
                (n.clone(), t.dtype, t.dims, t.data.to_vec())
            }
        })
        .collect();
    let werr = |path: &Path| {
        let path = path.display().to_string();
        move |source| RunError::Write { path, source }
    };
    if dir.extension().is_some_and(|e| e == "npz") {
        let parent = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !parent.is_dir() {
            return Err(RunError::Usage(format!(
                "output directory {} does not exist",
                parent.display()
            )));
        }
        let refs: Vec<_> = arrays
            .iter()
            .map(|(n, d, s, b)| (n.clone(), *d, s.clone(), &b[..]))
            .collect();
        crate::atomic::stage(dir, |f| npy::write_npz(f, &refs))
            .and_then(|s| s.commit(dir))
            .map_err(werr(dir))?;
        return Ok(vec![dir.to_path_buf()]);
    }
    if !dir.is_dir() {
        return Err(RunError::Usage(format!(
            "output directory {} does not exist",
            dir.display()
        )));
    }
    let mut staged = Vec::new();
    for (name, dtype, shape, bytes) in &arrays {
        let path = dir.join(format!("{}.npy", name.replace(['/', '\\'], "_")));
        let s = crate::atomic::stage(&path, |f| npy::write(f, *dtype, shape, bytes))
            .map_err(werr(&path))?;
        staged.push((s, path));
    }
    let mut written = Vec::new();
    for (s, path) in staged {
        s.commit(&path).map_err(werr(&path))?;
        written.push(path);
    }
    Ok(written)
}

/// Compares outputs with reference arrays (`<dir>/<name>.npy` or a `.npz`);
/// the report, or an error naming the first output out of tolerance.
pub fn check_outputs(
    refs: &Path,
    outs: &[(String, TensorValue)],
    tol: f64,
) -> Result<String, RunError> {
    let bundle: Option<HashMap<String, npy::NpyArray>> =
        if refs.extension().is_some_and(|e| e == "npz") {
            Some(npy::read_npz(refs)?.into_iter().collect())
        } else {
            None
        };
    let mut report = String::new();
    let mut failures = Vec::new();
    let mut compared = 0;
    for (name, got) in outs {
        let want = match &bundle {
            Some(b) => match b.get(name) {
                Some(a) => value_from_npy(a),
                None => continue,
            },
            None => {
                let p = refs.join(format!("{}.npy", name.replace(['/', '\\'], "_")));
                if !p.exists() {
                    continue;
                }
                value_from_npy(&npy::read(&p)?)
            }
        };
        compared += 1;
        if got.shape != want.shape {
            failures.push(format!(
                "{name}: shape {:?}, reference {:?}",
                got.shape, want.shape
            ));
            continue;
        }
        let (g, w) = (got.to_f64(), want.to_f64());
        let mut worst = 0f64;
        let mut bad = None;
        for (i, (a, b)) in g.iter().zip(&w).enumerate() {
            let d = (a - b).abs();
            if d.is_nan() || d > tol + tol * b.abs() {
                bad.get_or_insert((i, *a, *b));
            }
            if d > worst || d.is_nan() {
                worst = d;
            }
        }
        report += &format!("check {name}: max abs diff {worst:.3e}\n");
        if let Some((i, a, b)) = bad {
            failures.push(format!(
                "{name}[{i}] = {a}, reference {b} (tolerance {tol:e})"
            ));
        }
    }
    if compared == 0 {
        return Err(RunError::Usage(format!(
            "{}: no reference for any output",
            refs.display()
        )));
    }
    if !failures.is_empty() {
        return Err(RunError::Usage(format!(
            "outputs differ from {}: {}",
            refs.display(),
            failures.join("; ")
        )));
    }
    Ok(report)
}
