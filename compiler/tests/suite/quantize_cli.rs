//! `lpc quantize` end to end through the real binary: f32/f16/bf16 inputs,
//! outputs that match the runtime's reference formats, and clean rejection of
//! bad input (exit code 2, one line on stderr, no file left behind).

use lpc::npy;
use lpc_ir::DType;
use lpc_runtime::formats::{Format, Hif4Variant, Hif8Rounding, Mxfp4Rounding};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn lpc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lpc"))
        .args(args)
        .output()
        .expect("running lpc")
}

fn data(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919 % 2003) as f32 - 1001.0) / 300.0 * if i % 97 == 0 { 20.0 } else { 1.0 })
        .collect()
}

fn write_npy(path: &Path, dtype: DType, shape: &[usize], x: &[f32]) {
    let bytes: Vec<u8> = match dtype {
        DType::F32 => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F16 => x
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        DType::Bf16 => x
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
        DType::F64 => x.iter().flat_map(|&v| (v as f64).to_le_bytes()).collect(),
        DType::I64 => x.iter().flat_map(|&v| (v as i64).to_le_bytes()).collect(),
        other => panic!("test helper does not write {other}"),
    };
    let mut f = std::fs::File::create(path).unwrap();
    npy::write(&mut f, dtype, shape, &bytes).unwrap();
}

fn read_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let a = npy::read(path).unwrap();
    assert_eq!(a.dtype, DType::F32);
    let v = a
        .data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (a.shape, v)
}

/// The widened values that `lpc` sees for an input of this dtype.
fn widened(dtype: DType, x: &[f32]) -> Vec<f32> {
    match dtype {
        DType::F16 => x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect(),
        DType::Bf16 => x
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_f32())
            .collect(),
        _ => x.to_vec(),
    }
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn quantizes_f32_f16_bf16_like_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let shape = [3usize, 4, 128];
    let x = data(shape.iter().product());
    let cases = [
        (
            "mxfp4",
            Some("ties-away"),
            None,
            Format::Mxfp4(Mxfp4Rounding::TiesAway),
        ),
        ("hif4", None, Some("amct"), Format::Hif4(Hif4Variant::Amct)),
        (
            "hif8",
            Some("saturate"),
            None,
            Format::Hif8(Hif8Rounding::Saturate),
        ),
        ("mxfp4", None, None, Format::Mxfp4(Mxfp4Rounding::Rne)),
    ];
    for dtype in [DType::F32, DType::F16, DType::Bf16] {
        let input = dir.path().join(format!("x_{dtype}.npy"));
        write_npy(&input, dtype, &shape, &x);
        for (name, rounding, variant, fmt) in cases {
            let out = dir.path().join(format!("y_{dtype}_{name}.npy"));
            let codes = dir.path().join(format!("c_{dtype}_{name}.bin"));
            let mut args = vec!["quantize", input.to_str().unwrap(), "--format", name];
            args.extend(rounding.iter().flat_map(|r| ["--rounding", r]));
            args.extend(variant.iter().flat_map(|v| ["--variant", v]));
            args.extend([
                "-o",
                out.to_str().unwrap(),
                "--codes",
                codes.to_str().unwrap(),
            ]);
            let o = lpc(&args);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let stdout = String::from_utf8_lossy(&o.stdout);
            assert!(
                stdout.contains("SQNR dB") && stdout.contains(fmt.mode_name()),
                "{stdout}"
            );

            let xw = widened(dtype, &x);
            let layout = fmt.layout(&shape, -1, false).unwrap();
            let packed = fmt.quantize(&xw, &layout).unwrap();
            let want = fmt.dequantize(&packed, &layout).unwrap();
            assert_eq!(
                std::fs::read(&codes).unwrap(),
                packed,
                "{dtype} {name} codes"
            );
            let (oshape, y) = read_f32(&out);
            assert_eq!(oshape, shape);
            assert_eq!(
                y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{dtype} {name}"
            );
            // The printed SQNR is the one of these values.
            let s = lpc::quantize::error_stats(&xw, &y, packed.len());
            assert!(stdout.contains(&format!("{:.2}", s.sqnr_db)), "{stdout}");
        }
    }
}

#[test]
fn axis_zero_blocks_run_down_the_columns() {
    let dir = tempfile::tempdir().unwrap();
    let (k, n) = (64usize, 24usize);
    let x = data(k * n);
    let mut xt = vec![0f32; k * n];
    for i in 0..k {
        for j in 0..n {
            xt[j * k + i] = x[i * n + j];
        }
    }
    let (a, b) = (dir.path().join("w.npy"), dir.path().join("wt.npy"));
    write_npy(&a, DType::F32, &[k, n], &x);
    write_npy(&b, DType::F32, &[n, k], &xt);
    let (ca, cb) = (dir.path().join("a.bin"), dir.path().join("b.bin"));
    let (ya, yb) = (dir.path().join("ya.npy"), dir.path().join("yb.npy"));
    let o = lpc(&[
        "quantize",
        a.to_str().unwrap(),
        "-f",
        "hif4",
        "--axis",
        "0",
        "-o",
        ya.to_str().unwrap(),
        "--codes",
        ca.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = lpc(&[
        "quantize",
        b.to_str().unwrap(),
        "-f",
        "hif4",
        "-o",
        yb.to_str().unwrap(),
        "--codes",
        cb.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    assert_eq!(std::fs::read(ca).unwrap(), std::fs::read(cb).unwrap());
    let ((_, y), (_, yt)) = (read_f32(&ya), read_f32(&yb));
    for i in 0..k {
        for j in 0..n {
            assert_eq!(y[i * n + j], yt[j * k + i]);
        }
    }
}

#[test]
fn pad_allows_ragged_axes() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("x.npy");
    write_npy(&input, DType::F32, &[5, 40], &data(200));
    let out = dir.path().join("y.npy");
    let o = lpc(&[
        "quantize",
        input.to_str().unwrap(),
        "-f",
        "mxfp4",
        "--pad",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(read_f32(&out).0, vec![5, 40]);
    // 5 rows of 2 blocks of 17 bytes for 200 elements.
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("{:.4}", 170.0 / 200.0)));
}

#[test]
fn format_all_reports_every_mode() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("x.npy");
    write_npy(&input, DType::F32, &[4, 64], &data(256));
    let o = lpc(&["quantize", input.to_str().unwrap(), "--format", "all"]);
    assert!(o.status.success());
    let s = String::from_utf8_lossy(&o.stdout);
    for m in [
        "rne",
        "ties-away",
        "consortium",
        "amct",
        "ta",
        "saturate",
        "hybrid",
    ] {
        assert!(s.contains(&format!(" {m} ")), "{m} missing in\n{s}");
    }
}

/// Each bad invocation: exit code 2, one line on stderr mentioning `needle`,
/// and the directory holds exactly the inputs afterwards.
#[test]
fn bad_input_is_rejected_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = |name: &str| d.join(name).to_str().unwrap().to_string();
    write_npy(&d.join("ragged.npy"), DType::F32, &[3, 40], &data(120));
    write_npy(&d.join("ok.npy"), DType::F32, &[2, 64], &data(128));
    write_npy(&d.join("f64.npy"), DType::F64, &[2, 64], &data(128));
    write_npy(&d.join("i64.npy"), DType::I64, &[2, 64], &data(128));
    write_npy(&d.join("scalar.npy"), DType::F32, &[], &data(1));
    std::fs::write(d.join("garbage.npy"), b"this is not a numpy file").unwrap();
    let mut truncated = std::fs::read(d.join("ok.npy")).unwrap();
    truncated.truncate(truncated.len() - 3);
    std::fs::write(d.join("truncated.npy"), truncated).unwrap();
    let inputs = files_in(d);

    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![p("ragged.npy"), "-f".into(), "mxfp4".into()],
            "not a multiple of the mxfp4 block of 32",
        ),
        (vec![p("ragged.npy"), "-f".into(), "hif4".into()], "--pad"),
        (
            vec![p("f64.npy"), "-f".into(), "hif8".into()],
            "element type f64",
        ),
        (
            vec![p("i64.npy"), "-f".into(), "hif8".into()],
            "element type i64",
        ),
        (
            vec![p("garbage.npy"), "-f".into(), "mxfp4".into()],
            "not a .npy file",
        ),
        (
            vec![p("truncated.npy"), "-f".into(), "mxfp4".into()],
            "needs 512",
        ),
        (
            vec![p("missing.npy"), "-f".into(), "mxfp4".into()],
            "missing.npy",
        ),
        (
            vec![p("scalar.npy"), "-f".into(), "hif8".into()],
            "out of range",
        ),
        (
            vec![
                p("ok.npy"),
                "-f".into(),
                "mxfp4".into(),
                "--axis".into(),
                "2".into(),
            ],
            "axis 2 is out of range",
        ),
        (
            vec![
                p("ok.npy"),
                "-f".into(),
                "mxfp4".into(),
                "--axis".into(),
                "-3".into(),
            ],
            "axis -3 is out of range",
        ),
        (
            vec![p("ok.npy"), "-f".into(), "fp4".into()],
            "unknown format `fp4`",
        ),
        (
            vec![
                p("ok.npy"),
                "-f".into(),
                "mxfp4".into(),
                "--rounding".into(),
                "ta".into(),
            ],
            "unknown rounding `ta` for mxfp4",
        ),
        (
            vec![
                p("ok.npy"),
                "-f".into(),
                "hif4".into(),
                "--rounding".into(),
                "rne".into(),
            ],
            "hif4 has no rounding",
        ),
        (
            vec![
                p("ok.npy"),
                "-f".into(),
                "hif8".into(),
                "--variant".into(),
                "amct".into(),
            ],
            "hif8 has no variant",
        ),
        (
            vec![
                p("ok.npy"),
                "-f".into(),
                "all".into(),
                "-o".into(),
                p("out.npy"),
            ],
            "single format",
        ),
        (
            vec![
                p("ok.npy"),
                "-f".into(),
                "mxfp4".into(),
                "-o".into(),
                p("no/such/dir/out.npy"),
            ],
            "no/such/dir/out.npy",
        ),
    ];
    for (mut args, needle) in cases {
        if !args.iter().any(|a| a == "-o") {
            args.extend(["-o".into(), p("out.npy"), "--codes".into(), p("out.bin")]);
        }
        let mut full = vec!["quantize"];
        full.extend(args.iter().map(String::as_str));
        let o = lpc(&full);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{args:?}: not one line: {err}"
        );
        assert!(
            err.starts_with("error: ") && err.contains(needle),
            "{args:?}: {err}"
        );
        assert_eq!(files_in(d), inputs, "{args:?} left files behind");
    }
}
