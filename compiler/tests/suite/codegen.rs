//! Compiled libraries end to end: `lpc compile -o model.so` through the real
//! binary, then the library driven through its C API (`lpc::native`), the C
//! example, the Python example, `lpc run model.so`, and bad input.
//!
//! The bar (issue 5): for every fixture and format (none, mxfp4, hif4,
//! hif8) the library's outputs equal the interpreter's outputs of the same
//! quantized graph within 1e-5 of the output's largest magnitude, and the
//! unquantized library matches onnxruntime (`ref_ort`) within 1e-4.

use crate::common::{lpc, models, s};
use lpc::native::NativeModel;
use lpc::{npy, run};
use lpc_ir::interp::TensorValue;
use lpc_rt::{LpcTensor, MAX_RANK};
use std::path::{Path, PathBuf};
use std::process::Command;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// Compiles a fixture into `dir/NAME.so` (extra flags appended).
fn compile(fixture: &str, format: &str, dir: &Path, extra: &[&str]) -> PathBuf {
    let m = models().join(fixture).join("model.onnx");
    let so = dir.join(format!("{fixture}_{format}.so"));
    let mut args = vec!["compile", s(&m), "-o", s(&so)];
    if format != "none" {
        args.extend(["--format", format]);
    }
    args.extend(extra);
    let o = lpc(&args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    so
}

/// Largest |a - b| over the largest |b|.
fn rel_diff(got: &TensorValue, want: &TensorValue) -> f64 {
    assert_eq!(got.shape, want.shape);
    assert_eq!(got.dtype, want.dtype);
    let (g, w) = (got.to_f64(), want.to_f64());
    let scale = w.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-30);
    g.iter()
        .zip(&w)
        .map(|(a, b)| if a == b { 0.0 } else { (a - b).abs() })
        .fold(0f64, f64::max)
        / scale
}

fn inputs_of(dir: &Path, m: &NativeModel) -> Vec<TensorValue> {
    let names: Vec<String> = m.inputs.iter().map(|i| i.0.clone()).collect();
    let mut vals = run::read_inputs_named(&names, Some(dir), &[]).unwrap();
    names.iter().map(|n| vals.remove(n).unwrap()).collect()
}

fn check_fixture(fixture: &str) {
    check_fixture_with(fixture, &["none", "mxfp4", "hif4", "hif8"], &[]);
}

fn check_fixture_with(fixture: &str, formats: &[&str], flags: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let model = models().join(fixture).join("model.onnx");
    // Prefill inputs, and the decode step's where the fixture has one.
    let sets: Vec<(PathBuf, PathBuf)> =
        [("inputs", "ref_ort"), ("decode_inputs", "decode_ref_ort")]
            .iter()
            .map(|(i, r)| {
                (
                    models().join(fixture).join(i),
                    models().join(fixture).join(r),
                )
            })
            .filter(|(i, _)| i.is_dir())
            .collect();
    for &format in formats {
        let so = compile(fixture, format, dir.path(), flags);
        let lib = NativeModel::load(&so, 2).unwrap();
        for (inputs, ref_ort) in &sets {
            check_set(&lib, &model, inputs, ref_ort, format, flags, dir.path());
        }
        examples_agree(&so, &lib, &sets[0].0, dir.path());
    }
}

fn check_set(
    lib: &NativeModel,
    model: &Path,
    inputs: &Path,
    ref_ort: &Path,
    format: &str,
    flags: &[&str],
    dir: &Path,
) {
    let fixture = inputs.display();
    {
        let ins = inputs_of(inputs, lib);
        let got = lib.run(&ins).unwrap();
        // The interpreter on the same quantized graph, through the CLI.
        let refs = dir.join(format!("{format}.npz"));
        let mut args = vec![
            "run",
            s(model),
            "--inputs",
            s(inputs),
            "--outputs",
            s(&refs),
        ];
        if format != "none" {
            args.extend(["--format", format]);
        }
        // Compile-only flags: the target, and --calib (run takes --inputs
        // as its calibration template).
        let mut skip = false;
        for f in flags {
            if skip {
                skip = false;
                continue;
            }
            if *f == "--calib" {
                skip = true;
                continue;
            }
            if !f.starts_with("--target") {
                args.push(f);
            }
        }
        let o = lpc(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let want: Vec<(String, TensorValue)> = lib
            .outputs
            .iter()
            .map(|(n, _)| {
                let a = npy::read_npz(&refs)
                    .unwrap()
                    .into_iter()
                    .find(|(k, _)| k == n)
                    .unwrap_or_else(|| panic!("no `{n}` in {}", refs.display()))
                    .1;
                (n.clone(), run::value_from_npy(&a))
            })
            .collect();
        assert_eq!(got.len(), want.len());
        for (g, (name, w)) in got.iter().zip(&want) {
            let d = rel_diff(g, w);
            assert!(
                d <= 1e-5,
                "{fixture} {format} {name}: library vs interpreter {d:e}"
            );
        }
        if format == "none" {
            let mut compared = 0;
            for (g, (name, _)) in got.iter().zip(&want) {
                let p = ref_ort.join(format!("{}.npy", name.replace('/', "_")));
                if !p.exists() {
                    continue;
                }
                compared += 1;
                let r = run::value_from_npy(&npy::read(&p).unwrap());
                let (a, b) = (g.to_f64(), r.to_f64());
                for (x, y) in a.iter().zip(&b) {
                    assert!(
                        (x - y).abs() <= 1e-4 + 1e-4 * y.abs(),
                        "{fixture} {name}: {x} vs onnxruntime {y}"
                    );
                }
            }
            assert!(compared > 0, "{fixture}: no onnxruntime reference");
        }
    }
}

#[test]
fn qwen3_prefill_op23_matches_the_interpreter() {
    check_fixture("qwen3_small_prefill_op23");
}
#[test]
fn qwen3_prefill_ts_matches_the_interpreter() {
    check_fixture("qwen3_small_prefill_ts");
}
#[test]
fn qwen3_decode_ts_matches_the_interpreter() {
    check_fixture("qwen3_small_decode_ts");
}
#[test]
fn qwen3_genai_matches_the_interpreter() {
    check_fixture("qwen3_small_genai_fp32");
}
#[test]
fn wan_op23_matches_the_interpreter() {
    check_fixture("wan_small_op23");
}
#[test]
fn weight_only_quantization_matches_the_interpreter() {
    check_fixture_with(
        "qwen3_small_decode_ts",
        &["mxfp4", "hif4", "hif8"],
        &["--activations", "none"],
    );
}
/// Layers left unquantized run in bf16 by default: with the MLPs excluded,
/// the fused gate/up projection (two parts) and the down projection (with
/// the residual after it) are bf16 linears too; `--unquantized f32` keeps
/// them all in f32.
#[test]
fn unquantized_layers_in_bf16_or_f32_match_the_interpreter() {
    check_fixture_with("qwen3_small_prefill_ts", &["hif4"], &["--exclude", "mlp"]);
    check_fixture_with(
        "qwen3_small_prefill_ts",
        &["mxfp4"],
        &["--exclude", "mlp", "--unquantized", "f32"],
    );
}
/// GPTQ, smoothing and the scale search produce ordinary encodings and
/// folded weights: the compiled library still equals the interpreter.
#[test]
fn gptq_smoothing_and_scale_search_compile_too() {
    let calib = models().join("qwen3_small_prefill_ts/inputs");
    let c = calib.to_str().unwrap();
    check_fixture_with(
        "qwen3_small_prefill_ts",
        &["mxfp4"],
        &["--gptq", "--smooth", "0.5", "--scale-search", "--calib", c],
    );
}
#[test]
fn wan_ts_matches_the_interpreter() {
    check_fixture("wan_small_ts");
}

/// `--target cuda` libraries, their kernels run by the runtime's CPU
/// emulation of the device (`LPC_DEVICE=emulate`): the whole GPU schedule
/// (launch arguments, kernels, host-side ops on the same buffers) against
/// the interpreter, with the bar of the CPU libraries; the C and Python
/// examples too.
fn check_gpu_fixture(fixture: &str) {
    std::env::set_var("LPC_DEVICE", "emulate");
    check_fixture_with(
        fixture,
        &["none", "mxfp4", "hif4", "hif8"],
        &["--target=cuda"],
    );
}

#[test]
fn gpu_qwen3_prefill_op23_on_the_emulated_device() {
    check_gpu_fixture("qwen3_small_prefill_op23");
}
#[test]
fn gpu_qwen3_prefill_ts_on_the_emulated_device() {
    check_gpu_fixture("qwen3_small_prefill_ts");
}
#[test]
fn gpu_qwen3_decode_ts_on_the_emulated_device() {
    check_gpu_fixture("qwen3_small_decode_ts");
}
#[test]
fn gpu_qwen3_genai_on_the_emulated_device() {
    check_gpu_fixture("qwen3_small_genai_fp32");
}
#[test]
fn gpu_wan_op23_on_the_emulated_device() {
    check_gpu_fixture("wan_small_op23");
}
#[test]
fn gpu_wan_ts_on_the_emulated_device() {
    check_gpu_fixture("wan_small_ts");
}

/// `--emit mlir|ptx` for `--target cuda`: every kernel of the device module
/// is an entry of the PTX, which calls nothing outside itself; a library
/// without a usable GPU or with a bad `LPC_DEVICE` fails at load with a
/// message, never a crash.
#[test]
fn gpu_emit_stages_and_load_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (fixture, format) in [
        ("qwen3_small_decode_ts", "mxfp4"),
        ("qwen3_small_prefill_ts", "hif4"),
        ("qwen3_small_prefill_op23", "hif8"),
        ("qwen3_small_genai_fp32", "mxfp4"),
        ("wan_small_op23", "hif4"),
        ("wan_small_ts", "hif8"),
    ] {
        let m = models().join(fixture).join("model.onnx");
        let mlir = dir.path().join(format!("{fixture}.mlir"));
        let ptx = dir.path().join(format!("{fixture}.ptx"));
        for (emit, out) in [("mlir", &mlir), ("ptx", &ptx)] {
            let o = lpc(&[
                "compile",
                s(&m),
                "--format",
                format,
                "--target",
                "cuda",
                "--emit",
                emit,
                "-o",
                s(out),
            ]);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        let mlir = std::fs::read_to_string(&mlir).unwrap();
        let ptx = std::fs::read_to_string(&ptx).unwrap();
        let kernels: Vec<&str> = mlir
            .lines()
            .filter_map(|l| l.trim().strip_prefix("gpu.func @"))
            .map(|l| l.split('(').next().unwrap())
            .collect();
        assert!(kernels.len() >= 5, "{fixture}: {kernels:?}");
        for k in &kernels {
            assert!(
                ptx.contains(&format!(".entry {k}(")),
                "{fixture}: no entry {k}"
            );
        }
        assert!(ptx.contains(".target sm_90"));
        assert!(!ptx.contains(".extern") && !ptx.contains("__nv_"));
    }
    // --emit ptx without --target cuda is an error.
    let m = models().join("qwen3_small_decode_ts/model.onnx");
    let o = lpc(&[
        "compile",
        s(&m),
        "--emit",
        "ptx",
        "-o",
        s(&dir.path().join("x.ptx")),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--target cuda"));
    // Loading: no CUDA driver here (or a GPU: then the run succeeds).
    let so = compile(
        "qwen3_small_decode_ts",
        "mxfp4",
        dir.path(),
        &["--target=cuda"],
    );
    let inputs = models().join("qwen3_small_decode_ts/inputs");
    for (device, must_fail) in [("cuda", false), ("bogus", true)] {
        let o = Command::new(env!("CARGO_BIN_EXE_lpc"))
            .args(["run", s(&so), "--inputs", s(&inputs)])
            .env("LPC_DEVICE", device)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        if o.status.success() {
            assert!(!must_fail, "LPC_DEVICE={device} was accepted");
            continue;
        }
        assert_eq!(o.status.code(), Some(2), "{err}");
        let expected = if device == "cuda" {
            "CUDA"
        } else {
            "LPC_DEVICE"
        };
        assert!(err.contains(expected), "LPC_DEVICE={device}: {err}");
    }
}

fn tensor(dtype: i32, dims: &[i64], data: *mut std::ffi::c_void) -> LpcTensor {
    let mut d = [0i64; MAX_RANK];
    d[..dims.len()].copy_from_slice(dims);
    LpcTensor {
        dtype,
        rank: dims.len() as i32,
        dims: d,
        data,
    }
}

/// Runs the C example (built here) on a compiled model, optionally under
/// valgrind; returns the output directory.
fn run_c_example(so: &Path, inputs: &Path, dir: &Path, valgrind: bool) -> PathBuf {
    let header = so.with_extension("h");
    let exe = dir.join("run_model");
    let o = Command::new("cc")
        .args(["-O2", "-Wall", "-Wextra", "-Werror", "-g"])
        .arg(format!("-I{}", header.parent().unwrap().display()))
        .arg(format!(
            "-DLPC_MODEL_HEADER=\"{}\"",
            header.file_name().unwrap().to_str().unwrap()
        ))
        .arg(examples().join("c/run_model.c"))
        .arg("-o")
        .arg(&exe)
        .arg("-ldl")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = dir.join(if valgrind { "c_valgrind" } else { "c_out" });
    std::fs::create_dir_all(&out).unwrap();
    let mut cmd = if valgrind {
        let mut c = Command::new("valgrind");
        c.args([
            "-q",
            "--error-exitcode=9",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite",
        ])
        .arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    let o = cmd.arg(so).arg(inputs).arg(&out).arg("2").output().unwrap();
    assert!(
        o.status.success(),
        "C example{}: {}",
        if valgrind { " under valgrind" } else { "" },
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// Runs the Python example (numpy + ctypes; Debian's python3-numpy, which
/// scripts/setup.sh installs) on a compiled model; returns the output folder.
fn run_py_example(so: &Path, inputs: &Path, dir: &Path) -> PathBuf {
    let py = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let out = dir.join("py_out");
    std::fs::create_dir_all(&out).unwrap();
    let o = Command::new(py)
        .arg(examples().join("python/run_model.py"))
        .arg(so)
        .arg(inputs)
        .arg(&out)
        .arg("2")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "Python example (needs numpy: scripts/setup.sh installs python3-numpy): {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// The C and Python examples on `so` give `lib`'s outputs bit for bit.
fn examples_agree(so: &Path, lib: &NativeModel, inputs: &Path, dir: &Path) {
    let want = lib.run(&inputs_of(inputs, lib)).unwrap();
    for (what, out) in [
        ("C", run_c_example(so, inputs, dir, false)),
        ("Python", run_py_example(so, inputs, dir)),
    ] {
        for (g, w) in read_dir_outputs(&out, lib).iter().zip(&want) {
            assert_eq!(
                rel_diff(g, w),
                0.0,
                "{what} example differs on {}",
                so.display()
            );
        }
    }
}

fn read_dir_outputs(dir: &Path, lib: &NativeModel) -> Vec<TensorValue> {
    lib.outputs
        .iter()
        .map(|(n, _)| {
            let p = dir.join(format!("{}.npy", n.replace('/', "_")));
            run::value_from_npy(&npy::read(&p).unwrap())
        })
        .collect()
}

/// The examples on a decode model with a KV cache (every fixture and
/// format also goes through them in the tests above).
#[test]
fn c_and_python_examples_run_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let fx = "qwen3_small_decode_ts";
    let so = compile(fx, "mxfp4", dir.path(), &[]);
    let inputs = models().join(fx).join("inputs");
    let lib = NativeModel::load(&so, 2).unwrap();
    examples_agree(&so, &lib, &inputs, dir.path());
}

/// The AVX2 path (`--target-cpu haswell`, no AVX-512) on this machine:
/// correct, and clean under valgrind (which cannot run AVX-512 code).
#[test]
fn avx2_build_is_correct_and_clean_under_valgrind() {
    let dir = tempfile::tempdir().unwrap();
    let fx = "qwen3_small_decode_ts";
    let inputs = models().join(fx).join("inputs");
    for format in ["mxfp4", "hif4", "hif8"] {
        let native = compile(fx, format, dir.path(), &[]);
        let lib = NativeModel::load(&native, 1).unwrap();
        let want = lib.run(&inputs_of(&inputs, &lib)).unwrap();
        drop(lib);
        let hdir = dir.path().join(format!("haswell_{format}"));
        std::fs::create_dir_all(&hdir).unwrap();
        let so = compile(fx, format, &hdir, &["--target-cpu", "haswell"]);
        let asm = lpc(&[
            "compile",
            s(&models().join(fx).join("model.onnx")),
            "--format",
            format,
            "--target-cpu",
            "haswell",
            "--emit",
            "asm",
        ]);
        let text = String::from_utf8_lossy(&asm.stdout);
        assert!(
            text.contains("ymm") && !text.contains("zmm"),
            "haswell code uses AVX2, not AVX-512"
        );
        let lib = NativeModel::load(&so, 2).unwrap();
        let got = lib.run(&inputs_of(&inputs, &lib)).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!(rel_diff(g, w) <= 1e-5, "{format}: AVX2 build differs");
        }
        if format == "mxfp4" {
            let out = run_c_example(&so, &inputs, &hdir, true);
            for (g, w) in read_dir_outputs(&out, &lib).iter().zip(&want) {
                assert!(rel_diff(g, w) <= 1e-5);
            }
        }
    }
}

#[test]
fn bad_inputs_through_the_c_api_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let fx = "qwen3_small_prefill_ts";
    let so = compile(fx, "mxfp4", dir.path(), &["--max-dim", "64"]);
    let lib = NativeModel::load(&so, 1).unwrap();
    assert_eq!(lib.inputs.len(), 1);
    let mut ids = vec![1i64; 4 * 70];
    let p = ids.as_mut_ptr() as *mut std::ffi::c_void;
    let mut outs = vec![tensor(0, &[], std::ptr::null_mut()); lib.outputs.len()];
    let mut expect = |ins: &[LpcTensor], code: i32, needle: &str| {
        // SAFETY: every descriptor points into `ids` within its length.
        let rc = unsafe { lib.run_raw(ins, &mut outs) };
        let e = lib.error();
        assert_eq!(rc, code, "{needle}: {e}");
        assert!(e.contains(needle), "expected `{needle}` in `{e}`");
    };
    expect(&[tensor(7, &[1, 5, 1], p)], 2, "rank 3, expected 2");
    expect(&[tensor(1, &[1, 5], p)], 2, "element type f32");
    expect(
        &[tensor(7, &[1, 5], std::ptr::null_mut())],
        2,
        "data pointer is null",
    );
    expect(&[tensor(7, &[1, -5], p)], 2, "negative");
    expect(&[tensor(7, &[1, 70], p)], 2, "above its limit 64");
    expect(&[], 1, "takes 1 inputs");
    // The good call still works afterwards.
    // SAFETY: as above.
    let rc = unsafe { lib.run_raw(&[tensor(7, &[2, 5], p)], &mut outs) };
    assert_eq!(rc, 0, "{}", lib.error());
    assert_eq!(&outs[0].dims[..3], &[2, 5, 512]);
    // Batch 2 agrees with the interpreter on the same quantized graph.
    let bdir = dir.path().join("batch2");
    std::fs::create_dir_all(&bdir).unwrap();
    let ids2: Vec<i64> = (0..10).map(|i| (i * 37 + 5) % 512).collect();
    let bytes: Vec<u8> = ids2.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut f = std::fs::File::create(bdir.join("input_ids.npy")).unwrap();
    npy::write(&mut f, lpc_ir::DType::I64, &[2, 5], &bytes).unwrap();
    let refs = dir.path().join("b2.npz");
    let m = models().join(fx).join("model.onnx");
    let o = lpc(&[
        "run",
        s(&m),
        "--inputs",
        s(&bdir),
        "--format",
        "mxfp4",
        "--outputs",
        s(&refs),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = run::value_from_npy(&npy::read_npz(&refs).unwrap().remove(0).1);
    let ins = inputs_of(&bdir, &lib);
    assert!(rel_diff(&lib.run(&ins).unwrap()[0], &want) <= 1e-5);
    // An index out of range is a run-time error naming the node, not a crash.
    ids[3] = 100_000;
    // SAFETY: as above.
    let rc = unsafe { lib.run_raw(&[tensor(7, &[1, 5], p)], &mut outs) };
    assert_eq!(rc, 3);
    assert!(
        lib.error().contains("Gather: an index is out of range"),
        "{}",
        lib.error()
    );
}

#[test]
fn weights_files_are_checked_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let so = compile("wan_small_op23", "hif4", dir.path(), &[]);
    let w = so.with_extension("lpcw");
    let good = std::fs::read(&w).unwrap();
    let mut bad = good.clone();
    let n = bad.len();
    bad[n / 2] ^= 1;
    std::fs::write(&w, &bad).unwrap();
    let e = NativeModel::load(&so, 1).unwrap_err();
    assert!(e.contains("is corrupt"), "{e}");
    std::fs::write(&w, &good[..n / 3]).unwrap();
    let e = NativeModel::load(&so, 1).unwrap_err();
    assert!(e.contains("is truncated"), "{e}");
    // Another model's weights.
    let other = compile("wan_small_op23", "mxfp4", dir.path(), &[]);
    std::fs::copy(other.with_extension("lpcw"), &w).unwrap();
    let e = NativeModel::load(&so, 1).unwrap_err();
    assert!(e.contains("belongs to another compile"), "{e}");
    std::fs::write(&w, &good).unwrap();
    NativeModel::load(&so, 1).unwrap();
}

#[test]
fn embedded_weights_emit_stages_and_lpc_run() {
    let dir = tempfile::tempdir().unwrap();
    let fx = "wan_small_ts";
    let m = models().join(fx).join("model.onnx");
    let inputs = models().join(fx).join("inputs");
    let sub = dir.path().join("emb");
    std::fs::create_dir_all(&sub).unwrap();
    let emb = compile(fx, "hif8", &sub, &["--embed-weights"]);
    assert!(!emb.with_extension("lpcw").exists());
    let plain = compile(fx, "hif8", dir.path(), &[]);
    let (a, b) = (
        NativeModel::load(&emb, 2).unwrap(),
        NativeModel::load(&plain, 2).unwrap(),
    );
    let (ga, gb) = (
        a.run(&inputs_of(&inputs, &a)).unwrap(),
        b.run(&inputs_of(&inputs, &b)).unwrap(),
    );
    assert_eq!(rel_diff(&ga[0], &gb[0]), 0.0);
    let header = std::fs::read_to_string(plain.with_extension("h")).unwrap();
    for needle in [
        "lpc_model_load",
        "lpc_tensor",
        "#define LPC_NUM_INPUTS 3",
        "LPC_OUTPUT_0_NAME \"sample\"",
    ] {
        assert!(header.contains(needle), "header lacks {needle}:\n{header}");
    }
    // --emit stops at each stage.
    for (emit, needle) in [("llvm", "define"), ("asm", "lpc_model_load")] {
        let o = lpc(&["compile", s(&m), "--format", "mxfp4", "--emit", emit]);
        assert!(o.status.success());
        assert!(String::from_utf8_lossy(&o.stdout).contains(needle));
    }
    let obj = dir.path().join("m.o");
    let o = lpc(&["compile", s(&m), "--emit", "obj", "-o", s(&obj)]);
    assert!(o.status.success());
    assert_eq!(&std::fs::read(&obj).unwrap()[..4], b"\x7fELF");
    let o = lpc(&["compile", s(&m), "--emit", "lib"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("needs an output file"));
    let missing = dir.path().join("no/such/dir/m.so");
    let o = lpc(&["compile", s(&m), "-o", s(&missing)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!missing.exists());
    // `lpc run` on the library.
    let o = lpc(&["run", s(&plain), "--inputs", s(&inputs), "--threads", "2"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains("sample: f32") && out.contains("run time"),
        "{out}"
    );
    // Nothing but the outputs is left in the output directories.
    for d in [dir.path(), &sub] {
        for e in std::fs::read_dir(d).unwrap() {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                !n.starts_with(".lpc-build"),
                "staging directory left behind: {n}"
            );
        }
    }
}

/// The KV cache in generated code: a prefill of 4 tokens then 3 decode
/// steps give the same logits as one prefill of all 7 tokens.
#[test]
fn kv_cache_decode_equals_one_long_prefill() {
    use lpc_ir::interp::Data;
    let dir = tempfile::tempdir().unwrap();
    let so = compile("qwen3_small_decode_ts", "none", dir.path(), &[]);
    let lib = NativeModel::load(&so, 2).unwrap();
    let ids: Vec<i64> = vec![11, 400, 23, 7, 99, 256, 3];
    let feed = |toks: &[i64], past: usize, cache: &[TensorValue]| -> Vec<TensorValue> {
        let s = toks.len();
        let mut k = 0;
        lib.inputs
            .iter()
            .map(|(n, dt)| match n.as_str() {
                "input_ids" => TensorValue::with_dtype(*dt, vec![1, s], Data::I(toks.to_vec())),
                "attention_mask" => {
                    TensorValue::with_dtype(*dt, vec![1, past + s], Data::I(vec![1; past + s]))
                }
                "position_ids" => TensorValue::with_dtype(
                    *dt,
                    vec![1, s],
                    Data::I((past..past + s).map(|p| p as i64).collect()),
                ),
                _ => {
                    k += 1;
                    cache
                        .get(k - 1)
                        .cloned()
                        .unwrap_or_else(|| TensorValue::f32(vec![1, 2, 0, 64], vec![]))
                }
            })
            .collect()
    };
    let full = lib.run(&feed(&ids, 0, &[])).unwrap();
    let vocab = *full[0].shape.last().unwrap();
    let fl = full[0].as_f32().unwrap().to_vec();
    let mut out = lib.run(&feed(&ids[..4], 0, &[])).unwrap();
    for (t, &tok) in ids.iter().enumerate().skip(4) {
        let cache: Vec<TensorValue> = out[1..].to_vec();
        // Some steps find the worker parked, some woken (`lpc_model_wake`).
        if t % 2 == 0 {
            std::thread::sleep(std::time::Duration::from_millis(1));
            lib.wake();
        }
        out = lib.run(&feed(&[tok], t, &cache)).unwrap();
        let got = out[0].as_f32().unwrap();
        let want = &fl[t * vocab..(t + 1) * vocab];
        let d = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            d < 1e-4,
            "position {t}: incremental vs full prefill differ by {d}"
        );
    }
}

/// Every single-op case (`tests/fixtures/ops`, onnxruntime references) as a
/// compiled library: the generated code of each op against onnxruntime.
#[test]
fn every_op_case_compiles_and_matches_onnxruntime() {
    let root = models().join("../ops");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 80);
    let tmp = tempfile::tempdir().unwrap();
    let check = |d: &PathBuf| -> Result<(), String> {
        let case = d.file_name().unwrap().to_string_lossy().into_owned();
        let so = tmp.path().join(format!("{case}.so"));
        let m = d.join("model.onnx");
        let o = lpc(&["compile", s(&m), "-O1", "-o", s(&so)]);
        if !o.status.success() {
            return Err(format!(
                "{case}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        let lib = NativeModel::load(&so, 1).map_err(|e| format!("{case}: {e}"))?;
        let got = lib
            .run(&inputs_of(&d.join("inputs"), &lib))
            .map_err(|e| format!("{case}: {e}"))?;
        for (g, (name, _)) in got.iter().zip(&lib.outputs) {
            let want = run::value_from_npy(
                &npy::read(&d.join("ref_ort").join(format!("{name}.npy"))).unwrap(),
            );
            if g.shape != want.shape || g.dtype != want.dtype {
                return Err(format!(
                    "{case} {name}: {} {:?} vs onnxruntime {} {:?}",
                    g.dtype, g.shape, want.dtype, want.shape
                ));
            }
            for (i, (a, b)) in g.to_f64().iter().zip(want.to_f64()).enumerate() {
                if !((a - b).abs() <= 1e-4 + 1e-4 * b.abs() || (a.is_nan() && b.is_nan())) {
                    return Err(format!("{case} {name}[{i}]: {a} vs onnxruntime {b}"));
                }
            }
        }
        Ok(())
    };
    let failures: Vec<String> = std::thread::scope(|sc| {
        let (a, b) = dirs.split_at(dirs.len() / 2);
        let h: Vec<_> = [a, b]
            .into_iter()
            .map(|part| {
                sc.spawn(move || {
                    part.iter()
                        .filter_map(|d| check(d).err())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        h.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// fp16 and bf16 models (a synthetic Qwen3-shaped layer, weights in an
/// external-data file) compile and run: the library computes in f32
/// between an entry and an exit cast, and agrees with the interpreter
/// (which rounds every op's output to the half type) within that
/// rounding; quantized builds too (the weights quantized from the half
/// values directly).
#[test]
fn half_precision_models_compute_in_f32() {
    use lpc::synth::{write_layer, LayerDims};
    use lpc_ir::interp::Data;
    use lpc_ir::DType;
    let dims = LayerDims {
        hidden: 256,
        heads: 2,
        kv_heads: 1,
        head_dim: 128,
        intermediate: 384,
    };
    let dir = tempfile::tempdir().unwrap();
    for dt in [DType::F16, DType::Bf16] {
        let name = format!("layer_{dt:?}");
        let model = write_layer(dir.path(), &name, &dims, dt, 7).unwrap();
        let inputs = dir.path().join(format!("{name}_inputs"));
        std::fs::create_dir_all(&inputs).unwrap();
        let mut seed = 11u64;
        let mut rnd = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
                })
                .collect()
        };
        let ins = vec![
            (
                "x".to_string(),
                TensorValue::with_dtype(dt, vec![1, 5, 256], Data::F(rnd(5 * 256))),
            ),
            (
                "attn".to_string(),
                TensorValue::with_dtype(dt, vec![1, 5, 256], Data::F(rnd(5 * 256))),
            ),
        ];
        run::write_outputs(&inputs, &ins).unwrap();
        for format in ["none", "mxfp4"] {
            let so = dir.path().join(format!("{name}_{format}.so"));
            let mut args = vec!["compile", s(&model), "-o", s(&so)];
            if format != "none" {
                args.extend(["--format", format]);
            }
            let o = lpc(&args);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let lib = NativeModel::load(&so, 2).unwrap();
            assert!(
                lib.inputs.iter().all(|i| i.1 == dt),
                "declared input types kept"
            );
            let got = lib.run(&inputs_of(&inputs, &lib)).unwrap();
            let refs = dir.path().join(format!("{name}_{format}.npz"));
            let mut args = vec![
                "run",
                s(&model),
                "--inputs",
                s(&inputs),
                "--outputs",
                s(&refs),
            ];
            if format != "none" {
                args.extend(["--format", format]);
            }
            let o = lpc(&args);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let want = npy::read_npz(&refs).unwrap();
            for (g, (n, _)) in got.iter().zip(&lib.outputs) {
                let w = run::value_from_npy(&want.iter().find(|(k, _)| k == n).unwrap().1);
                assert_eq!(g.dtype, dt, "{n}: declared output type kept");
                let d = rel_diff(g, &w);
                // A few half-precision roundings of the intermediate values
                // (bf16 keeps 8 bits, f16 11); quantized, those roundings
                // can also move an activation across a 4-bit rounding
                // boundary (a weight read wrongly would be off by O(1)).
                let bar = match (dt, format) {
                    (DType::Bf16, "none") => 3e-2,
                    (_, "none") => 4e-3,
                    (DType::Bf16, _) => 8e-2,
                    _ => 2e-2,
                };
                assert!(
                    d <= bar,
                    "{name} {format} {n}: library vs interpreter {d:e}"
                );
            }
        }
    }
}

/// `lpc compile --profile`: the library times each node and `lpc run`
/// prints the table (every node once per run, shares adding up to 100%);
/// the outputs are the same as without the marks, and a library compiled
/// without them prints no table.
#[test]
fn profiled_library_reports_time_per_node() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = "wan_small_ts";
    let inputs = models().join(fixture).join("inputs");
    let plain = compile(fixture, "mxfp4", dir.path(), &["-O1"]);
    let pdir = dir.path().join("profiled");
    std::fs::create_dir(&pdir).unwrap();
    let profiled = compile(fixture, "mxfp4", &pdir, &["-O1", "--profile"]);
    let run = |so: &Path| {
        let o = lpc(&["run", s(so), "--inputs", s(&inputs), "--repeat", "3"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let text = run(&profiled);
    let table: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("time per node"))
        .skip(2)
        .collect();
    assert!(!table.is_empty(), "no profile table in:\n{text}");
    let mut share = 0.0;
    for l in &table {
        let f: Vec<&str> = l.split_whitespace().collect();
        share += f[0].trim_end_matches('%').parse::<f64>().unwrap();
        // One warm-up and three timed runs.
        assert_eq!(f[2], "4", "{l}");
    }
    // Each share is rounded to 0.1%.
    let slack = 0.05 * table.len() as f64 + 0.01;
    assert!((share - 100.0).abs() <= slack, "shares add up to {share}");
    for op in ["lpc.qgemm", "lpc.attention", "Conv", "lpc.layer_norm"] {
        assert!(
            table.iter().any(|l| l.contains(op)),
            "{op} missing:\n{text}"
        );
    }
    assert!(!run(&plain).contains("time per node"));
    let (a, b) = (
        NativeModel::load(&plain, 1).unwrap(),
        NativeModel::load(&profiled, 1).unwrap(),
    );
    let (ya, yb) = (
        a.run(&inputs_of(&inputs, &a)).unwrap(),
        b.run(&inputs_of(&inputs, &b)).unwrap(),
    );
    assert_eq!(ya[0].to_f64(), yb[0].to_f64());
    assert!(a.profile().is_none());
    assert!(b.profile().is_some_and(|t| t.contains("lpc.qgemm")));
}
