//! From a graph to files: `--emit llvm|asm|obj|lib`. A library build writes
//! `NAME.so` (generated object + the embedded `lpc-rt` archive, exporting
//! only the C API), `NAME.h` and, unless weights are embedded, `NAME.lpcw`.
//! Everything is staged in a temporary directory beside the output and
//! renamed into place only when every step succeeded.

use crate::codegen::{self, Generated, WeightsLayout};
use crate::{emit_asm, emit_object, link_shared, optimize, CpuError, CpuTarget};
use inkwell::context::Context;
use inkwell::OptimizationLevel;
use lpc_ir::Graph;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The `lpc-rt` static archive, built by `build.rs`.
pub static RUNTIME_ARCHIVE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/liblpc_rt.a"));

/// Where a build stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emit {
    /// Optimized LLVM IR text.
    Llvm,
    /// Target assembly.
    Asm,
    /// An object file of the generated code alone.
    Obj,
    /// The shared library, its header and weights.
    Lib,
    /// GPU libraries: the device module's MLIR (before lowering).
    Mlir,
    /// GPU libraries: the device module's PTX.
    Ptx,
}

#[derive(Clone, Debug)]
pub struct BuildOptions {
    pub target: CpuTarget,
    pub opt: OptimizationLevel,
    pub codegen: codegen::Options,
    pub emit: Emit,
}

/// What a build wrote and how long its stages took.
#[derive(Clone, Debug, Default)]
pub struct BuildReport {
    pub files: Vec<(PathBuf, u64)>,
    pub codegen_s: f64,
    pub optimize_s: f64,
    pub emit_s: f64,
    /// `--target cuda`: where the ops went.
    pub device_summary: Option<String>,
}

/// The prost index at the end of a weights file (for tools; the runtime
/// checks the fixed header only).
#[derive(Clone, PartialEq, prost::Message)]
pub struct WeightsIndex {
    #[prost(message, repeated, tag = "1")]
    pub tensors: Vec<TensorEntry>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorEntry {
    #[prost(string, tag = "1")]
    pub name: String,
    /// ONNX element type code.
    #[prost(int32, tag = "2")]
    pub dtype: i32,
    #[prost(uint64, repeated, tag = "3")]
    pub dims: Vec<u64>,
    /// Offset in the data region.
    #[prost(uint64, tag = "4")]
    pub offset: u64,
    #[prost(uint64, tag = "5")]
    pub len: u64,
    /// Empty: the formats' layout; `cpu`: the CPU layout of
    /// `codegen/layout.rs` (rewritten for the kernels, same byte count).
    #[prost(string, tag = "6")]
    pub layout: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CpuError + '_ {
    move |source| CpuError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes the weights file: header, data region (streamed from the mapped
/// constants), index.
pub fn write_weights(g: &Graph, w: &WeightsLayout, path: &Path) -> Result<(), CpuError> {
    use lpc_rt::weights::{Header, HEADER};
    let f = std::fs::File::create(path).map_err(io(path))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, f);
    let index = WeightsIndex {
        tensors: w
            .entries
            .iter()
            .map(|&(v, offset, len)| {
                let t = g.constant(v).expect("constant");
                TensorEntry {
                    name: g.value(v).name.clone(),
                    dtype: t.dtype.onnx_code(),
                    dims: t.dims.iter().map(|&d| d as u64).collect(),
                    offset,
                    len,
                    layout: if w.repacked.contains_key(&v) {
                        "cpu".into()
                    } else {
                        String::new()
                    },
                }
            })
            .collect(),
    };
    let ib = prost::Message::encode_to_vec(&index);
    let h = Header {
        data_len: w.len,
        crc: w.crc,
        index_len: ib.len() as u32,
        index_offset: HEADER as u64 + w.len,
    };
    out.write_all(&h.encode()).map_err(io(path))?;
    let mut at = 0u64;
    let zeros = [0u8; 64];
    w.for_each_piece(g, |off, piece| -> Result<(), CpuError> {
        out.write_all(&zeros[..(off - at) as usize])
            .map_err(io(path))?;
        out.write_all(piece).map_err(io(path))?;
        at = off + piece.len() as u64;
        Ok(())
    })?;
    out.write_all(&ib).map_err(io(path))?;
    out.flush().map_err(io(path))?;
    Ok(())
}

/// Files beside `out`: `(header, weights)` for `NAME.so`.
pub fn companions(out: &Path) -> (PathBuf, PathBuf) {
    (out.with_extension("h"), out.with_extension("lpcw"))
}

/// Generates, optimizes and writes what `o.emit` asks for at `out`.
pub fn build(g: &Graph, o: &BuildOptions, out: &Path) -> Result<BuildReport, CpuError> {
    let mut rep = BuildReport::default();
    let t0 = Instant::now();
    // fp16/bf16 graphs compute in f32 (`codegen/legalize.rs`).
    let legal;
    let g = if codegen::legalize::has_half(g) {
        let mut c = g.clone();
        codegen::legalize::compute_in_f32(&mut c);
        legal = c;
        &legal
    } else {
        g
    };
    let cx = Context::create();
    // Kernel paths follow the target's features, decided here once.
    let mut cgo = o.codegen.clone();
    let f = &o.target.features;
    cgo.vnni512 = f.contains("+avx512vnni") && f.contains("+avx512bw");
    cgo.vbmi512 = f.contains("+avx512vbmi") && f.contains("+avx512bw");
    cgo.bf16_512 = f.contains("+avx512bf16") && f.contains("+avx512bw");
    cgo.pace_strips = o.target.cpu.starts_with("znver");
    let Generated {
        module,
        desc,
        weights,
        device,
    } = codegen::generate(&cx, g, &cgo)?;
    rep.codegen_s = t0.elapsed().as_secs_f64();
    rep.device_summary = device.as_ref().map(|d| d.summary.clone());
    if matches!(o.emit, Emit::Mlir | Emit::Ptx) && device.is_none() {
        return Err(CpuError::Codegen(codegen::CgError::Graph(
            "--emit mlir|ptx needs --target cuda".into(),
        )));
    }
    let t1 = Instant::now();
    let tm = o.target.machine(o.opt)?;
    optimize(&module, &tm, o.opt)?;
    rep.optimize_s = t1.elapsed().as_secs_f64();
    let t2 = Instant::now();
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let stage = tempfile::Builder::new()
        .prefix(".lpc-build")
        .tempdir_in(&dir)
        .map_err(io(&dir))?;
    let file_name = out
        .file_name()
        .map(|f| f.to_os_string())
        .unwrap_or_else(|| "model.so".into());
    let staged = stage.path().join(&file_name);
    let mut moves: Vec<(PathBuf, PathBuf)> = Vec::new();
    match o.emit {
        Emit::Mlir | Emit::Ptx => {
            let d = device.as_ref().expect("checked above");
            let text = if o.emit == Emit::Mlir {
                &d.mlir
            } else {
                &d.ptx
            };
            std::fs::write(&staged, text).map_err(io(out))?;
        }
        Emit::Llvm => {
            std::fs::write(&staged, module.print_to_string().to_bytes()).map_err(io(out))?;
        }
        Emit::Asm => {
            std::fs::write(&staged, emit_asm(&module, &tm)?).map_err(io(out))?;
        }
        Emit::Obj => emit_object(&module, &tm, &staged)?,
        Emit::Lib => {
            let obj = stage.path().join("model.o");
            emit_object(&module, &tm, &obj)?;
            let archive = stage.path().join("liblpc_rt.a");
            std::fs::write(&archive, RUNTIME_ARCHIVE).map_err(io(&archive))?;
            let script = stage.path().join("exports.map");
            std::fs::write(
                &script,
                "{ global: lpc_model_*; lpc_last_error; local: *; };\n",
            )
            .map_err(io(&script))?;
            let vs = format!("-Wl,--version-script={}", script.display());
            link_shared(
                &[&obj, &archive],
                &[
                    &vs,
                    "-Wl,-Bsymbolic",
                    "-Wl,--gc-sections",
                    "-Wl,--strip-debug",
                    "-static-libgcc",
                    "-lm",
                    "-lpthread",
                    "-ldl",
                ],
                &staged,
            )?;
            let (h, wpath) = companions(out);
            let sh = stage.path().join("model.h");
            std::fs::write(&sh, crate::header::render(&desc, o.codegen.embed_weights))
                .map_err(io(&sh))?;
            moves.push((sh, h));
            if !o.codegen.embed_weights {
                let sw = stage.path().join("model.lpcw");
                write_weights(g, &weights, &sw)?;
                moves.push((sw, wpath));
            }
        }
    }
    moves.push((staged, out.to_path_buf()));
    for (from, to) in moves {
        std::fs::rename(&from, &to).map_err(io(&to))?;
        let len = std::fs::metadata(&to).map(|m| m.len()).unwrap_or(0);
        rep.files.push((to, len));
    }
    rep.emit_s = t2.elapsed().as_secs_f64();
    Ok(rep)
}
