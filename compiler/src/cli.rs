//! The `lpc` command line.

use crate::compile::{self, CompileOptions};
use crate::quant_args::QuantArgs;
use crate::quantize::{self, QuantizeRequest};
use crate::{eval, inspect, run};
use clap::{Parser, Subcommand};
use lpc_runtime::formats::Format;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "lpc",
    version,
    about = "lpc: an ahead-of-time quantization compiler for ONNX models"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

const CODES_LAYOUT: &str = "\
Byte layout of --codes (no header; little-endian where it matters):
  The tensor is viewed as [outer, K, inner] around the quantized axis of length K.
  Each of the outer*inner rows (C order over the other axes) is cut into
  ceil(K / block) blocks along K (the last one zero-padded with --pad); the
  blocks of one row are contiguous, rows follow each other.
  mxfp4  17 bytes per block of 32: the E8M0 scale byte (0xFF = NaN block), then
         16 data bytes, element 2k in the low nibble of byte k (E2M1 codes).
  hif4   36 bytes per unit of 64: byte 0 the E6M2 scale (0xFF = NaN unit),
         byte 1 the per-8 micro-exponents (group 0 in bit 7), bytes 2-3 the
         per-4 micro-exponents (subgroup 0 in bit 7 of byte 2), then 32 data
         bytes, element 2k in the low nibble (S1P2: sign bit 3, magnitude 2..0).
  hif8   1 byte per element (HiF8 code), rows as above.
The formats are defined bit for bit in tests/fixtures/formats/SPEC.md.";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fake-quantize a tensor from a .npy file and report the error.
    ///
    /// Reads an f32, f16 or bf16 .npy (bf16 as saved by ml_dtypes, descr '<V2'),
    /// quantizes it along one axis, writes the dequantized tensor as f32 .npy,
    /// and prints SQNR, max abs error and storage bytes per element.
    #[command(after_long_help = CODES_LAYOUT)]
    Quantize {
        /// Input tensor (.npy, f32/f16/bf16, C order).
        input: PathBuf,
        /// mxfp4, hif4, hif8, or `all` for a report over every format and mode.
        #[arg(short, long)]
        format: String,
        /// Element rounding: mxfp4 rne (default) | ties-away; hif8 ta (default) | saturate | hybrid.
        #[arg(long)]
        rounding: Option<String>,
        /// Encoder variant: hif4 consortium (default) | amct.
        #[arg(long)]
        variant: Option<String>,
        /// Axis along which blocks run (the GEMM reduction axis); negative counts from the end.
        #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
        axis: isize,
        /// Pad the last block of each row with zeros when the axis length is not
        /// a multiple of the block (32 for mxfp4, 64 for hif4).
        #[arg(long)]
        pad: bool,
        /// Output: the dequantized tensor as f32 .npy, same shape as the input.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Output: the packed codes and scales as raw bytes (layout below, in --help).
        #[arg(long)]
        codes: Option<PathBuf>,
    },
    /// Describe an ONNX model: producer, opsets, inputs and outputs with their
    /// symbolic shapes, parameters by element type, the op histogram, and the
    /// ops the interpreter does not support (all at once, with counts).
    Inspect {
        /// The model (.onnx; external data is found beside it).
        model: PathBuf,
        /// Also print the imported graph in lpc's textual IR.
        #[arg(long)]
        print_ir: bool,
    },
    /// Compile a model: import, canonicalize, quantize, generate native code.
    ///
    /// `-o model.so` writes the shared library, `model.h` (its C API and this
    /// model's inputs and outputs) and `model.lpcw` (the weights, mapped at
    /// load time) beside it; `--emit` stops at an earlier stage.
    Compile {
        /// The model (.onnx).
        model: PathBuf,
        /// Output file (stdout when absent, for `--emit ir|llvm|asm`).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// What to emit; default: `lib` when the output ends in `.so`, else `ir`.
        #[arg(long, value_enum)]
        emit: Option<Emit>,
        /// LLVM optimization level, 0-3.
        #[arg(short = 'O', long = "opt-level", default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=3))]
        opt_level: u8,
        /// CPU to generate code for (`native`: this machine; e.g. haswell, sapphirerapids).
        #[arg(long, default_value = "native")]
        target_cpu: String,
        /// LLVM target features (e.g. `+avx2,-avx512f`); default: the CPU's own.
        #[arg(long)]
        target_features: Option<String>,
        /// Put the weights into the library instead of a `.lpcw` file beside it.
        #[arg(long)]
        embed_weights: bool,
        /// Largest value a symbolic input dimension may take at run time.
        #[arg(long, default_value_t = 1 << 24)]
        max_dim: u64,
        /// Time every node of the generated graph: `lpc run` then prints
        /// each node's share of the run (`lpc_model_profile` in the C API).
        /// The marks cost about 40 ns per node (4 µs of the 72 µs Wan fixture,
        /// 119 nodes). In a `--target cuda` library
        /// kernels run asynchronously: their time goes to the node where the
        /// host waits for them.
        #[arg(long)]
        profile: bool,
        /// Where the ops run: `cpu`, or `cuda` (NVIDIA GPUs: kernels lowered
        /// through MLIR to PTX, loaded by the CUDA driver at run time;
        /// `LPC_DEVICE=emulate` runs them on the CPU).
        #[arg(long, value_enum, default_value = "cpu")]
        target: Target,
        /// GPU architecture for `--target cuda`.
        #[arg(long, default_value = "sm_90")]
        gpu_arch: String,
        /// Print the IR after this pass (repeatable, or `all`).
        #[arg(long = "print-ir-after", value_name = "PASS")]
        print_ir_after: Vec<String>,
        /// Write the IR before the pipeline and after every pass into DIR
        /// (`<model>.0.input.ir`, `<model>.1.<pass>.ir`, ...).
        #[arg(long, value_name = "DIR")]
        dump_phases_to: Option<PathBuf>,
        /// Print how long each pass took.
        #[arg(long)]
        time_passes: bool,
        #[command(flatten)]
        quant: QuantArgs,
        /// Print the effective quantization configuration and per-layer plan.
        #[arg(short, long)]
        verbose: bool,
        /// Write the accuracy report (as `lpc eval`) as JSON; needs --calib.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// Inputs to measure the report on: a folder of .npy or a .npz bundle.
        #[arg(long, value_name = "DIR|FILE.npz")]
        calib: Option<PathBuf>,
        /// As `lpc eval --auto-mixed`, measured on --calib: the chosen
        /// per-layer formats are compiled in (and reported with -v/--report).
        #[arg(long, value_name = "TARGET")]
        auto_mixed: Option<String>,
        /// The wider format of --auto-mixed: hif8 (default) or none (f32).
        #[arg(long, value_name = "FORMAT", default_value = "hif8")]
        auto_mixed_format: String,
    },
    /// Greedy generation with a compiled decoder LLM (`lpc compile -o model.so`
    /// of a Qwen3-style export with a KV cache): a prefill on the prompt, then
    /// one token per step; prints the tokens and tokens per second, and with
    /// --reference the next-token agreement with another library (e.g. f32).
    Generate {
        /// The compiled model (.so).
        model: PathBuf,
        /// Prompt token ids, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        prompt: Vec<i64>,
        /// Tokens to generate.
        #[arg(long, default_value_t = 8)]
        steps: usize,
        /// A second compiled library fed the same tokens (agreement).
        #[arg(long)]
        reference: Option<PathBuf>,
        /// Worker threads (0: LPC_NUM_THREADS, else all cores).
        #[arg(long, default_value_t = 0)]
        threads: i32,
    },
    /// Run a model on .npy inputs: an .onnx in lpc's reference interpreter,
    /// or a compiled library (`lpc compile -o model.so`) natively.
    Run {
        /// The model (.onnx) or a compiled library (.so).
        model: PathBuf,
        /// Folder with one `<graph input name>.npy` per input, or a `.npz` bundle.
        #[arg(long)]
        inputs: Option<PathBuf>,
        /// One input as NAME=FILE.npy (repeatable; overrides --inputs).
        #[arg(long = "input", value_name = "NAME=FILE")]
        input: Vec<String>,
        /// Folder (must exist) to write `<graph output name>.npy` into, or a
        /// `.npz` file to write them all into.
        #[arg(long)]
        outputs: Option<PathBuf>,
        /// Compare the outputs with reference `<name>.npy` files in DIR (or a
        /// `.npz`): prints the max abs difference per output and fails (exit 2)
        /// beyond --tolerance.
        #[arg(long, value_name = "DIR")]
        check: Option<PathBuf>,
        /// Allowed |got - want| <= tol + tol * |want| for --check.
        #[arg(long, default_value_t = 1e-4)]
        tolerance: f64,
        /// Worker threads of a compiled library (0: LPC_NUM_THREADS, else all cores).
        #[arg(long, default_value_t = 0)]
        threads: i32,
        /// Time a compiled library over N runs (after one warm-up): median and min-max.
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        /// With --repeat: flush the caches before every run (a buffer twice
        /// the last-level cache is read through on every CPU), so that
        /// weights come from DRAM as for a model larger than the caches;
        /// the worker threads are woken after it, as a model's previous
        /// layers keep them awake.
        #[arg(long)]
        cold: bool,
        /// Run the quantized graph (as `lpc compile` would build it).
        #[command(flatten)]
        quant: QuantArgs,
    },
    /// Measure what quantization costs: per quantized layer and end to end,
    /// against the f32 model on the given inputs (no code generation needed).
    Eval {
        /// The model (.onnx).
        model: PathBuf,
        /// Inputs: a folder of `<graph input name>.npy` or a `.npz` bundle.
        #[arg(long, alias = "calib")]
        inputs: PathBuf,
        /// Write the report as JSON too.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Also quantize one layer at a time and rank the layers by their
        /// effect on the first output.
        #[arg(long)]
        sensitivity: bool,
        /// Keep the most sensitive layers in a wider format until the target
        /// holds: sqnr>=DB, kl<=X or top1>=FRACTION (on the first output).
        #[arg(long, value_name = "TARGET")]
        auto_mixed: Option<String>,
        /// The wider format of --auto-mixed: hif8 (default) or none (f32).
        #[arg(long, value_name = "FORMAT", default_value = "hif8")]
        auto_mixed_format: String,
        #[command(flatten)]
        quant: QuantArgs,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Emit {
    /// lpc's textual IR after canonicalization (and quantization).
    Ir,
    /// Optimized LLVM IR of the generated code.
    Llvm,
    /// Target assembly of the generated code.
    Asm,
    /// An object file of the generated code.
    Obj,
    /// The shared library with its header and weights file.
    Lib,
    /// `--target cuda`: the kernels' MLIR (gpu, scf, arith, memref dialects).
    Mlir,
    /// `--target cuda`: the kernels' PTX.
    Ptx,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    Cpu,
    Cuda,
}

/// Runs a parsed command line; returns the text to print or a one-line error.
/// `backend` generates native code (the `lpc` binary passes the LLVM back end;
/// library users without one get an error from `compile --emit llvm|asm|obj|lib`).
pub fn run(cli: Cli, backend: Option<compile::Backend>) -> Result<String, String> {
    match cli.command {
        Command::Quantize {
            input,
            format,
            rounding,
            variant,
            axis,
            pad,
            output,
            codes,
        } => {
            let formats = if format == "all" {
                if rounding.is_some() || variant.is_some() {
                    return Err(
                        "--format all covers every rounding and variant; drop --rounding/--variant"
                            .into(),
                    );
                }
                quantize::all_formats()
            } else {
                vec![
                    Format::parse(&format, rounding.as_deref(), variant.as_deref())
                        .map_err(|e| e.to_string())?,
                ]
            };
            let req = QuantizeRequest {
                input,
                formats,
                axis,
                pad,
                output,
                codes,
            };
            quantize::run(&req).map_err(|e| e.to_string())
        }
        Command::Compile {
            model,
            output,
            emit,
            opt_level,
            target_cpu,
            target_features,
            embed_weights,
            max_dim,
            profile,
            target,
            gpu_arch,
            print_ir_after,
            dump_phases_to,
            time_passes,
            quant,
            verbose,
            report,
            calib,
            auto_mixed,
            auto_mixed_format,
        } => {
            let quant = quant.resolved()?;
            let mut qcfg = if quant.active() {
                Some(quant.config()?)
            } else {
                quant.config().map(|_| None)?
            };
            if let Some(q) = qcfg.as_mut() {
                crate::gptq::prepare_if_needed(
                    &model,
                    q,
                    calib.as_deref(),
                    "--calib DIR|FILE.npz",
                )?;
            }
            let mut mixed = String::new();
            if let Some(t) = &auto_mixed {
                let (Some(q), Some(c)) = (qcfg.as_mut(), calib.as_deref()) else {
                    return Err("--auto-mixed needs a format and --calib DIR|FILE.npz".into());
                };
                let wide = wide_format(&auto_mixed_format)?;
                let r = eval::auto_mixed(&model, c, q, t, wide).map_err(|e| e.to_string())?;
                let am = r.auto_mixed.as_ref().expect("auto-mixed report");
                *q = eval::with_wide_layers(q, &am.wide_layers, wide);
                mixed = format!(
                    "auto-mixed {t}: {} layer(s) in {}{}, effective bits per weight {:.3}\n",
                    am.wide_layers.len(),
                    am.wide_format,
                    if am.met { "" } else { " (target not met)" },
                    r.effective_bits_per_weight
                );
            }
            let emit = emit.unwrap_or(
                if output
                    .as_ref()
                    .is_some_and(|o| o.extension().is_some_and(|e| e == "so"))
                {
                    Emit::Lib
                } else {
                    Emit::Ir
                },
            );
            let codegen = match emit {
                Emit::Ir => None,
                e => Some(compile::Codegen {
                    emit: match e {
                        Emit::Llvm => compile::Stage::Llvm,
                        Emit::Asm => compile::Stage::Asm,
                        Emit::Obj => compile::Stage::Obj,
                        Emit::Mlir => compile::Stage::Mlir,
                        Emit::Ptx => compile::Stage::Ptx,
                        _ => compile::Stage::Lib,
                    },
                    gpu: (target == Target::Cuda).then(|| gpu_arch.clone()),
                    opt_level,
                    target_cpu,
                    target_features,
                    embed_weights,
                    max_dim,
                    profile,
                }),
            };
            let mut text = compile::compile(&CompileOptions {
                model: model.clone(),
                output,
                print_ir_after,
                dump_phases_to,
                time_passes,
                quant: qcfg.clone(),
                verbose,
                codegen,
                backend,
            })
            .map_err(|e| e.to_string())?;
            if let Some(r) = report {
                let (Some(q), Some(c)) = (qcfg, calib) else {
                    return Err(
                        "--report needs a format and --calib DIR|FILE.npz (inputs to measure on)"
                            .into(),
                    );
                };
                text += &eval::eval(&model, &c, &q, Some(&r)).map_err(|e| e.to_string())?;
            }
            if !mixed.is_empty() {
                eprint!("{mixed}");
            }
            Ok(text)
        }
        Command::Eval {
            model,
            inputs,
            report,
            sensitivity,
            auto_mixed,
            auto_mixed_format,
            quant,
        } => {
            let quant = quant.resolved()?;
            if !quant.active() {
                return Err("lpc eval needs a format to evaluate (--format or --weights)".into());
            }
            let mut cfg = quant.config()?;
            crate::gptq::prepare_model(&model, &mut cfg, &inputs)?;
            if sensitivity || auto_mixed.is_some() {
                let r = match &auto_mixed {
                    Some(t) => {
                        let wide = wide_format(&auto_mixed_format)?;
                        eval::auto_mixed(&model, &inputs, &cfg, t, wide)
                    }
                    None => eval::evaluate(&model, &inputs, &cfg).and_then(|mut r| {
                        r.sensitivity = Some(eval::sensitivity(&model, &inputs, &cfg, &r)?);
                        Ok(r)
                    }),
                }
                .map_err(|e| e.to_string())?;
                return eval::finish(&r, report.as_deref()).map_err(|e| e.to_string());
            }
            eval::eval(&model, &inputs, &cfg, report.as_deref()).map_err(|e| e.to_string())
        }
        Command::Generate {
            model,
            prompt,
            steps,
            reference,
            threads,
        } => crate::generate::generate(&model, &prompt, steps, reference.as_deref(), threads),
        Command::Inspect { model, print_ir } => {
            inspect::inspect(&model, print_ir).map_err(|e| e.to_string())
        }
        Command::Run {
            model,
            inputs,
            input,
            outputs,
            check,
            tolerance,
            threads,
            repeat,
            cold,
            quant,
        } => {
            let mut qcfg = if quant.active() {
                Some(quant.config()?)
            } else {
                quant.config().map(|_| None)?
            };
            let pairs = input
                .iter()
                .map(|p| {
                    p.split_once('=')
                        .map(|(n, f)| (n.to_string(), PathBuf::from(f)))
                        .ok_or_else(|| format!("--input {p}: expected NAME=FILE.npy"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if let Some(dir) = outputs
                .as_ref()
                .filter(|d| d.extension().is_none_or(|e| e != "npz"))
            {
                if !dir.is_dir() {
                    return Err(format!("output directory {} does not exist", dir.display()));
                }
            }
            if let Some(q) = qcfg.as_mut() {
                crate::gptq::prepare_if_needed(&model, q, inputs.as_deref(), "--inputs")?;
            }
            let native = model.extension().is_some_and(|e| e == "so");
            let t = std::time::Instant::now();
            let (outs, elapsed) = if native {
                if qcfg.is_some() {
                    return Err(
                        "a compiled library is already quantized: drop the quantization flags"
                            .into(),
                    );
                }
                run::run_native(&model, inputs.as_deref(), &pairs, threads, repeat, cold)
                    .map_err(|e| e.to_string())?
            } else {
                let o = run::run_model(&model, inputs.as_deref(), &pairs, qcfg.as_ref())
                    .map_err(|e| e.to_string())?;
                (o, run::Timing::once(t.elapsed()))
            };
            let mut text = String::new();
            for (name, v) in &outs {
                let vals = v.to_f64();
                let (lo, hi) = vals
                    .iter()
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                        (a.min(x), b.max(x))
                    });
                let mean = vals.iter().sum::<f64>() / vals.len().max(1) as f64;
                text += &format!(
                    "{name}: {} {:?} min {lo:.6} max {hi:.6} mean {mean:.6}\n",
                    v.dtype, v.shape
                );
            }
            text += &format!(
                "{} time {:.3} ms\n",
                if native { "run" } else { "interpreter" },
                elapsed.median.as_secs_f64() * 1e3
            );
            if native && repeat > 1 {
                text += &format!(
                    "runs {repeat}: median {:.4} ms, min {:.4} ms, max {:.4} ms\n",
                    elapsed.median.as_secs_f64() * 1e3,
                    elapsed.min.as_secs_f64() * 1e3,
                    elapsed.max.as_secs_f64() * 1e3
                );
            }
            if !elapsed.profile.is_empty() {
                text += "time per node (lpc compile --profile), slowest first:\n";
                text += &elapsed.profile;
            }
            if let Some(dir) = outputs {
                for p in run::write_outputs(&dir, &outs).map_err(|e| e.to_string())? {
                    text += &format!("wrote {}\n", p.display());
                }
            }
            if let Some(refs) = check {
                let report =
                    run::check_outputs(&refs, &outs, tolerance).map_err(|e| e.to_string())?;
                text += &report;
            }
            Ok(text)
        }
    }
}

/// The wider format of `--auto-mixed` (`none`: f32).
fn wide_format(name: &str) -> Result<Option<lpc_runtime::formats::Format>, String> {
    if name == "none" {
        return Ok(None);
    }
    lpc_runtime::formats::Format::parse(name, None, None)
        .map(Some)
        .map_err(|e| e.to_string())
}
