//! `lpc quantize`: fake-quantize a tensor from a `.npy` file and report the error.

use crate::npy::{self, NpyError};
use lpc_ir::DType;
use lpc_runtime::formats::{Format, FormatError, Hif4Variant, Hif8Rounding, Mxfp4Rounding};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum QuantizeError {
    #[error(transparent)]
    Npy(#[from] NpyError),
    #[error("{path}: {source}")]
    Format {
        path: String,
        #[source]
        source: FormatError,
    },
    #[error("{path}: element type {dtype} cannot be quantized (expected f32, f16 or bf16)")]
    DType { path: String, dtype: DType },
    #[error("{0}")]
    Usage(String),
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// What to quantize and where to write it.
#[derive(Debug, Clone)]
pub struct QuantizeRequest {
    pub input: PathBuf,
    /// One or more formats; more than one only for a report without outputs.
    pub formats: Vec<Format>,
    pub axis: isize,
    pub pad: bool,
    pub output: Option<PathBuf>,
    pub codes: Option<PathBuf>,
}

/// Every format with every mode, for `--format all`.
pub fn all_formats() -> Vec<Format> {
    let mut v = Vec::new();
    v.extend([Mxfp4Rounding::Rne, Mxfp4Rounding::TiesAway].map(Format::Mxfp4));
    v.extend([Hif4Variant::Consortium, Hif4Variant::Amct].map(Format::Hif4));
    v.extend(
        [
            Hif8Rounding::Ta,
            Hif8Rounding::Saturate,
            Hif8Rounding::Hybrid,
        ]
        .map(Format::Hif8),
    );
    v
}

/// Error statistics of a fake-quantized tensor against its input.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorStats {
    /// 10·log10(Σx² / Σ(x−x̂)²) over the elements where both are finite.
    pub sqnr_db: f64,
    pub max_abs_err: f64,
    /// Elements whose input or output is not finite (left out of the above).
    pub non_finite: usize,
    pub bytes_per_element: f64,
}

pub fn error_stats(x: &[f32], y: &[f32], packed_bytes: usize) -> ErrorStats {
    let (mut sig, mut noise, mut max, mut non_finite) = (0f64, 0f64, 0f64, 0usize);
    for (&a, &b) in x.iter().zip(y) {
        if !(a.is_finite() && b.is_finite()) {
            non_finite += 1;
            continue;
        }
        let e = (a as f64 - b as f64).abs();
        sig += a as f64 * a as f64;
        noise += e * e;
        max = max.max(e);
    }
    ErrorStats {
        sqnr_db: 10.0 * (sig / noise).log10(),
        max_abs_err: max,
        non_finite,
        bytes_per_element: packed_bytes as f64 / x.len().max(1) as f64,
    }
}

/// The input widened to f32, and the packed bytes of each requested format.
struct Quantized {
    x: Vec<f32>,
    rows: Vec<(Format, Vec<u8>, Vec<f32>)>,
}

fn quantize_array(req: &QuantizeRequest, a: &npy::NpyArray) -> Result<Quantized, QuantizeError> {
    let path = req.input.display().to_string();
    let x: Vec<f32> = match a.dtype {
        DType::F32 => a
            .data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        DType::F16 => a
            .data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        DType::Bf16 => a
            .data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        dtype => return Err(QuantizeError::DType { path, dtype }),
    };
    let mut rows = Vec::new();
    for &f in &req.formats {
        let fe = |source| QuantizeError::Format {
            path: path.clone(),
            source,
        };
        let layout = f.layout(&a.shape, req.axis, req.pad).map_err(fe)?;
        // Widening is exact, so quantizing the f32 copy is quantizing the input.
        let packed = f.quantize(&x, &layout).map_err(fe)?;
        let y = f.dequantize(&packed, &layout).map_err(fe)?;
        rows.push((f, packed, y));
    }
    Ok(Quantized { x, rows })
}

fn stage(path: &Path, bytes: &[u8]) -> Result<crate::atomic::Staged, QuantizeError> {
    crate::atomic::stage(path, |f| std::io::Write::write_all(f, bytes)).map_err(|source| {
        QuantizeError::Write {
            path: path.display().to_string(),
            source,
        }
    })
}

/// Runs the request; returns the report text. Nothing is written unless
/// every step succeeded, and each output appears whole or not at all.
pub fn run(req: &QuantizeRequest) -> Result<String, QuantizeError> {
    if req.formats.len() != 1 && (req.output.is_some() || req.codes.is_some()) {
        return Err(QuantizeError::Usage(
            "-o/--codes take a single format, not `all`".into(),
        ));
    }
    let a = npy::read(&req.input)?;
    let q = quantize_array(req, &a)?;

    let mut staged = Vec::new();
    if let Some((_, packed, y)) = q.rows.first() {
        if let Some(out) = &req.output {
            let mut buf = Vec::with_capacity(y.len() * 4 + 128);
            npy::write(&mut buf, DType::F32, &a.shape, bytemuck::cast_slice(y)).map_err(
                |source| QuantizeError::Write {
                    path: out.display().to_string(),
                    source,
                },
            )?;
            staged.push((stage(out, &buf)?, out));
        }
        if let Some(codes) = &req.codes {
            staged.push((stage(codes, packed)?, codes));
        }
    }

    let mut report = String::new();
    let shape = format!("{:?}", a.shape);
    let _ = writeln!(
        report,
        "input   {} ({} {shape})",
        req.input.display(),
        a.dtype
    );
    let _ = writeln!(
        report,
        "{:<7} {:<11} {:>9} {:>12} {:>9} {:>8} {:>10}",
        "format", "mode", "SQNR dB", "max |err|", "bytes/el", "bits/el", "non-finite"
    );
    for (f, packed, y) in &q.rows {
        let s = error_stats(&q.x, y, packed.len());
        let _ = writeln!(
            report,
            "{:<7} {:<11} {:>9.2} {:>12.4e} {:>9.4} {:>8.3} {:>10}",
            f.name(),
            f.mode_name(),
            s.sqnr_db,
            s.max_abs_err,
            s.bytes_per_element,
            s.bytes_per_element * 8.0,
            s.non_finite
        );
    }
    for (tmp, path) in staged {
        tmp.commit(path).map_err(|source| QuantizeError::Write {
            path: path.display().to_string(),
            source,
        })?;
        let _ = writeln!(report, "wrote   {}", path.display());
    }
    Ok(report)
}
