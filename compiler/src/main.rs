use clap::Parser;
use lpc::compile::{Codegen, Stage};
use lpc_target_cpu::artifact::{self, BuildOptions, Emit};
use lpc_target_cpu::{codegen, CpuTarget};
use lpc_target_gpu::GpuCompiler;
use std::fmt::Write as _;
use std::path::Path;

/// The LLVM back end (`lpc compile --emit llvm|asm|obj|lib`).
fn cpu_backend(
    g: &lpc_ir::Graph,
    o: &Codegen,
    model: &Path,
    out: Option<&Path>,
) -> Result<String, String> {
    let mut target = CpuTarget::host().map_err(|e| e.to_string())?;
    if o.target_cpu != "native" {
        target.cpu = o.target_cpu.clone();
        target.features = String::new();
    }
    if let Some(f) = &o.target_features {
        target.features = f.clone();
    }
    use inkwell::OptimizationLevel as L;
    let opt = [L::None, L::Less, L::Default, L::Aggressive][o.opt_level.min(3) as usize];
    let name = model
        .file_stem()
        .map_or("model".into(), |s| s.to_string_lossy().into_owned());
    let bo = BuildOptions {
        target,
        opt,
        codegen: codegen::Options {
            name,
            embed_weights: o.embed_weights,
            max_dim: o.max_dim,
            profile: o.profile,
            vnni512: false,
            vbmi512: false,
            bf16_512: false,
            pace_strips: false,
            device: o.gpu.as_ref().map(|arch| codegen::DeviceOptions {
                arch: arch.clone(),
                lower: lower_kernels,
            }),
        },
        emit: match o.emit {
            Stage::Llvm => Emit::Llvm,
            Stage::Asm => Emit::Asm,
            Stage::Obj => Emit::Obj,
            Stage::Mlir => Emit::Mlir,
            Stage::Ptx => Emit::Ptx,
            Stage::Lib => Emit::Lib,
        },
    };
    let Some(out) = out else {
        // Text to stdout: build into a scratch directory and read it back.
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let p = dir.path().join("out.txt");
        artifact::build(g, &bo, &p).map_err(|e| e.to_string())?;
        return std::fs::read_to_string(&p).map_err(|e| e.to_string());
    };
    let r = artifact::build(g, &bo, out).map_err(|e| e.to_string())?;
    let mut s = String::new();
    if let Some(d) = &r.device_summary {
        let _ = writeln!(s, "{d}");
    }
    for (f, len) in &r.files {
        let _ = writeln!(s, "wrote {} ({len} bytes)", f.display());
    }
    let _ = write!(
        s,
        "code generation {:.2} s, LLVM optimization {:.2} s, object and link {:.2} s",
        r.codegen_s, r.optimize_s, r.emit_s
    );
    // Peak resident memory of the whole compile (Linux).
    let hwm = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|st| {
            st.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        });
    match hwm {
        Some(kb) => {
            let _ = writeln!(s, ", peak memory {} MB", kb / 1024);
        }
        None => s.push('\n'),
    }
    Ok(s)
}

/// The MLIR back end for `--target cuda`: the kernels as PTX and as LLVM IR
/// for the CPU (`LPC_DEVICE=emulate`).
fn lower_kernels(
    ks: &[lpc_kernels::kernel::Kernel],
    arch: &str,
) -> Result<codegen::DeviceCode, String> {
    if ks.is_empty() {
        return Ok(codegen::DeviceCode {
            summary: String::new(),
            mlir: String::new(),
            ptx: String::new(),
            host_ir: String::new(),
        });
    }
    let c = GpuCompiler::new();
    let src = lpc_kernels::kernel::gpu_module(ks);
    let ptx = c.lower_to_ptx(&src, arch).map_err(|e| e.to_string())?;
    let host_ir = c.host_llvm_ir(ks).map_err(|e| e.to_string())?;
    Ok(codegen::DeviceCode {
        summary: String::new(),
        mlir: String::new(),
        ptx: ptx.into_iter().map(|p| p.ptx).collect(),
        host_ir,
    })
}

fn main() {
    let cli = lpc::cli::Cli::parse();
    // Bad input is reported as errors, never as panics. Should a bug panic
    // anyway, the message becomes one `error:` line (exit code 2) instead of
    // a backtrace; the interpreter names the node it was running.
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(|| lpc::cli::run(cli, Some(cpu_backend)));
    match result {
        Ok(Ok(text)) => print!("{text}"),
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
        Err(p) => {
            let what = lpc_ir::interp::panic_message(p.as_ref());
            eprintln!("error: internal error in lpc: {what}");
            std::process::exit(2);
        }
    }
}
