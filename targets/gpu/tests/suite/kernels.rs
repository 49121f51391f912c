//! Every kernel family run on the CPU through the host emulator (the same
//! MLIR bodies as the device module) against lpc's interpreter.

use crate::common::*;
use lpc_ir::interp::{Data, TensorValue};
use lpc_ir::{Attr, DType};
use lpc_target_gpu::kernels::elementwise;
use lpc_target_gpu::GpuCompiler;

/// Runs an elementwise op through its kernel, broadcasting like numpy.
fn run_elementwise(
    c: &GpuCompiler,
    op: &str,
    attrs: &[(&str, Attr)],
    ins: &[TensorValue],
) -> (TensorValue, TensorValue) {
    let want = reference(op, attrs, ins, 1).remove(0);
    let out_shape = want.shape.clone();
    let spec = elementwise::Spec {
        op: op.into(),
        rank: out_shape.len(),
        ins: ins.iter().map(|t| t.dtype).collect(),
        out: want.dtype,
        tanh_gelu: attrs
            .iter()
            .any(|(k, v)| *k == "approximate" && *v == Attr::String("tanh".into())),
    };
    let k = elementwise::kernel("lpc_ew", &spec).unwrap();
    let e = c.emulator(&[k]).unwrap();
    let n: usize = out_shape.iter().product();
    let mut bufs = vec![vec![0u8; want.dtype.size() * n]];
    bufs.extend(ins.iter().map(bytes));
    let mut args: Vec<A> = (0..=ins.len()).map(A::Buf).collect();
    args.extend(out_shape.iter().map(|&d| A::I(d as i64)));
    for t in ins {
        args.extend(bstrides(&t.shape, &out_shape).into_iter().map(A::I));
    }
    launch(&e, "lpc_ew", n, &mut bufs, &args);
    (value(want.dtype, &out_shape, &bufs[0]), want)
}

#[test]
fn elementwise_float_ops_match_the_interpreter() {
    let c = GpuCompiler::new();
    let mut r = Rng(7);
    let a = f32s(&[2, 3, 4], r.vec(24, 3.0));
    let b = f32s(&[3, 1], r.vec(3, 2.0));
    for op in ["Add", "Sub", "Mul", "Div", "Max", "Min"] {
        let (g, w) = run_elementwise(&c, op, &[], &[a.clone(), b.clone()]);
        assert_close(op, &g, &w, 1e-6);
    }
    for op in ["Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual"] {
        let (g, w) = run_elementwise(&c, op, &[], &[a.clone(), a.clone()]);
        assert_close(op, &g, &w, 0.0);
        let (g, w) = run_elementwise(&c, op, &[], &[a.clone(), b.clone()]);
        assert_close(op, &g, &w, 0.0);
    }
    // Large arguments for the range reductions of sin/cos/exp.
    let big = f32s(&[5, 7], r.vec(35, 40.0));
    for op in [
        "Neg",
        "Abs",
        "Sqrt",
        "Exp",
        "Sin",
        "Cos",
        "Tanh",
        "Erf",
        "Sigmoid",
        "Relu",
        "Reciprocal",
        "Floor",
        "Ceil",
        "Gelu",
        "lpc.gelu",
        "lpc.silu",
    ] {
        let x = if op == "Sqrt" {
            f32s(&[5, 7], r.vec(35, 9.0).iter().map(|v| v.abs()).collect())
        } else {
            big.clone()
        };
        let (g, w) = run_elementwise(&c, op, &[], std::slice::from_ref(&x));
        assert_close(op, &g, &w, 1e-6);
        let _ = x;
    }
    let pos = f32s(&[64], (0..64).map(|i| i as f32 * 37.5).collect());
    for op in ["Sin", "Cos"] {
        let (g, w) = run_elementwise(&c, op, &[], std::slice::from_ref(&pos));
        assert_close(op, &g, &w, 1e-6);
    }
    let t = [("approximate", Attr::String("tanh".into()))];
    let (g, w) = run_elementwise(&c, "lpc.gelu", &t, std::slice::from_ref(&big));
    assert_close("gelu tanh", &g, &w, 1e-6);
    let (g, w) = run_elementwise(&c, "lpc.swiglu", &[], &[big.clone(), big.clone()]);
    assert_close("swiglu", &g, &w, 1e-6);
}

#[test]
fn elementwise_int_bool_and_cast_ops_match_the_interpreter() {
    let c = GpuCompiler::new();
    let a = TensorValue::i64(vec![2, 3], vec![5, -7, 9, 0, 12, -3]);
    let b = TensorValue::i64(vec![3], vec![2, 3, -4]);
    for op in [
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Max",
        "Min",
        "Equal",
        "Less",
        "LessOrEqual",
    ] {
        let (g, w) = run_elementwise(&c, op, &[], &[a.clone(), b.clone()]);
        assert_close(op, &g, &w, 0.0);
    }
    let p = TensorValue::bool(vec![4], vec![true, false, true, false]);
    let q = TensorValue::bool(vec![4], vec![true, true, false, false]);
    for op in ["And", "Or", "Xor", "Equal"] {
        let (g, w) = run_elementwise(&c, op, &[], &[p.clone(), q.clone()]);
        assert_close(op, &g, &w, 0.0);
    }
    let (g, w) = run_elementwise(&c, "Not", &[], std::slice::from_ref(&p));
    assert_close("Not", &g, &w, 0.0);
    let x = f32s(&[2, 4], vec![1.5, -2.25, 3.0, 0.0, -0.5, 7.75, 100.0, -3.5]);
    let y = f32s(&[4], vec![9.0, 8.0, 7.0, 6.0]);
    let (g, w) = run_elementwise(&c, "Where", &[], &[p.clone(), x.clone(), y.clone()]);
    assert_close("Where f32", &g, &w, 0.0);
    let m = TensorValue::bool(vec![3], vec![true, false, true]);
    let (g, w) = run_elementwise(&c, "Where", &[], &[m, a.clone(), b.clone()]);
    assert_close("Where i64", &g, &w, 0.0);
    for (to, name) in [
        (DType::I64, "f32->i64"),
        (DType::F16, "f32->f16"),
        (DType::Bf16, "f32->bf16"),
        (DType::Bool, "f32->bool"),
        (DType::I32, "f32->i32"),
    ] {
        let at = [("to", Attr::Int(to.onnx_code() as i64))];
        let (g, w) = run_elementwise(&c, "Cast", &at, std::slice::from_ref(&x));
        assert_close(name, &g, &w, 0.0);
    }
    let at = [("to", Attr::Int(DType::F32.onnx_code() as i64))];
    let (g, w) = run_elementwise(&c, "Cast", &at, std::slice::from_ref(&a));
    assert_close("i64->f32", &g, &w, 0.0);
    let (g, w) = run_elementwise(&c, "Cast", &at, std::slice::from_ref(&p));
    assert_close("bool->f32", &g, &w, 0.0);
}

use lpc_target_gpu::kernels::nn;

#[test]
fn norms_match_the_interpreter() {
    let c = GpuCompiler::new();
    let mut r = Rng(11);
    let (rows, n) = (6, 40);
    let x = f32s(&[2, 3, n], r.vec(rows * n, 4.0));
    let g = f32s(&[n], r.vec(n, 1.5));
    let bias = f32s(&[n], r.vec(n, 0.5));
    for (op, center) in [("lpc.rms_norm", false), ("lpc.layer_norm", true)] {
        let mut ins = vec![x.clone(), g.clone()];
        if center {
            ins.push(bias.clone());
        }
        let eps = 1e-6f32;
        let want = reference(op, &[("epsilon", Attr::Float(eps))], &ins, 1).remove(0);
        let spec = nn::NormSpec {
            center,
            bias: center,
            x: DType::F32,
            scale: DType::F32,
            epsilon_bits: eps.to_bits(),
        };
        let e = c.emulator(&[nn::norm("lpc_norm", &spec).unwrap()]).unwrap();
        let mut bufs = vec![
            vec![0u8; rows * n * 4],
            vec![0u8; rows * 4],
            vec![0u8; rows * 4],
        ];
        bufs.extend(ins.iter().map(bytes));
        let mut args: Vec<A> = (0..bufs.len()).map(A::Buf).collect();
        args.extend([A::I(n as i64), A::I(n as i64)]);
        launch(&e, "lpc_norm", rows, &mut bufs, &args);
        assert_close(op, &value(DType::F32, &x.shape, &bufs[0]), &want, 1e-6);
    }
}

#[test]
fn linear_matches_the_interpreter() {
    use lpc_target_gpu::kernels::linalg::{linear, LinearWeights};
    let c = GpuCompiler::new();
    let mut r = Rng(13);
    // Two parts, a bias, an odd K (the bf16 pairs' last odd half is zero).
    let (rows, k, ns) = (3, 37, [20, 9]);
    let nt: usize = ns.iter().sum();
    let x = f32s(&[rows, k], r.vec(rows * k, 2.0));
    let bias = f32s(&[nt], r.vec(nt, 0.5));
    for lw in [
        LinearWeights::F32,
        LinearWeights::F32Transposed,
        LinearWeights::Bf16Pairs,
    ] {
        let mut ins = vec![x.clone()];
        for nn in ns {
            let shape = match lw {
                LinearWeights::F32 => vec![k, nn],
                LinearWeights::F32Transposed => vec![nn, k],
                LinearWeights::Bf16Pairs => vec![k.div_ceil(2), nn, 2],
            };
            let mut v = r.vec(shape.iter().product(), 1.0);
            if lw == LinearWeights::Bf16Pairs {
                // bf16 values (truncated), zero past K.
                for (i, e) in v.iter_mut().enumerate() {
                    let (t, h) = (i / (2 * nn), i % 2);
                    *e = if 2 * t + h < k {
                        f32::from_bits(e.to_bits() & 0xffff_0000)
                    } else {
                        0.0
                    };
                }
                ins.push(TensorValue::with_dtype(DType::Bf16, shape, Data::F(v)));
            } else {
                ins.push(f32s(&shape, v));
            }
        }
        ins.push(bias.clone());
        let mut attrs = vec![("parts", Attr::Int(2))];
        match lw {
            LinearWeights::F32Transposed => attrs.push(("transposed", Attr::Int(1))),
            LinearWeights::Bf16Pairs => attrs.push(("bf16", Attr::Int(1))),
            LinearWeights::F32 => {}
        }
        let want = reference("lpc.linear", &attrs, &ins, 1).remove(0);
        let e = c.emulator(&[linear("lpc_linear", 2, lw, true)]).unwrap();
        let mut bufs = vec![vec![0u8; rows * nt * 4]];
        bufs.extend(ins.iter().map(bytes));
        let mut args: Vec<A> = (0..bufs.len()).map(A::Buf).collect();
        args.extend([k, nt, ns[0], ns[1]].map(|v| A::I(v as i64)));
        launch(&e, "lpc_linear", rows * nt, &mut bufs, &args);
        let got = value(DType::F32, &want.shape, &bufs[0]);
        assert_close(&format!("linear {lw:?}"), &got, &want, 1e-6);
    }
}

#[test]
fn rope_matches_the_interpreter() {
    let c = GpuCompiler::new();
    let mut r = Rng(5);
    let (bn, h, s, d) = (2, 3, 5, 16);
    for (bhsd, interleaved, pos, rot) in [
        (true, false, false, 16),
        (false, true, false, 16),
        (true, false, true, 8),
        (false, false, true, 16),
    ] {
        let x = if bhsd {
            f32s(&[bn, h, s, d], r.vec(bn * h * s * d, 2.0))
        } else {
            f32s(&[bn, s, h * d], r.vec(bn * h * s * d, 2.0))
        };
        let half = rot / 2;
        let (cos, sin, crows, cb) = if pos {
            let rows = 12;
            (
                f32s(&[rows, half], r.vec(rows * half, 1.0)),
                f32s(&[rows, half], r.vec(rows * half, 1.0)),
                rows,
                0,
            )
        } else {
            (
                f32s(&[1, s, half], r.vec(s * half, 1.0)),
                f32s(&[1, s, half], r.vec(s * half, 1.0)),
                s,
                1,
            )
        };
        let mut ins = vec![x.clone(), cos.clone(), sin.clone()];
        if pos {
            ins.push(TensorValue::i64(
                vec![bn, s],
                (0..bn * s).map(|i| (i * 7 % 12) as i64).collect(),
            ));
        }
        let mut attrs = vec![("interleaved", Attr::Int(interleaved as i64))];
        if !bhsd {
            attrs.push(("num_heads", Attr::Int(h as i64)));
        }
        if rot != d {
            attrs.push(("rotary_embedding_dim", Attr::Int(rot as i64)));
        }
        let want = reference("lpc.rope", &attrs, &ins, 1).remove(0);
        let spec = nn::RopeSpec {
            x: DType::F32,
            cache: DType::F32,
            interleaved,
            position_ids: pos,
            bhsd,
        };
        let e = c.emulator(&[nn::rope("lpc_rope", &spec).unwrap()]).unwrap();
        let mut bufs = vec![vec![0u8; x.len() * 4]];
        bufs.extend(ins.iter().map(bytes));
        bufs.push(vec![0u8; 4]);
        let mut args: Vec<A> = (0..bufs.len()).map(A::Buf).collect();
        for v in [h, s, d, rot, half, cb, crows] {
            args.push(A::I(v as i64));
        }
        launch(&e, "lpc_rope", bn * h * s, &mut bufs, &args);
        let what = format!("rope bhsd={bhsd} interleaved={interleaved} pos={pos} rot={rot}");
        assert_close(&what, &value(DType::F32, &x.shape, &bufs[0]), &want, 1e-6);
        assert_eq!(bufs.last().unwrap(), &[0, 0, 0, 0]);
    }
}

#[test]
fn attention_matches_the_interpreter() {
    let c = GpuCompiler::new();
    let mut r = Rng(9);
    let (bn, hq, hkv, l, d, past) = (2, 4, 2, 3, 8, 4);
    // (mask, causal, softcap, with past)
    for (mask, causal, softcap, with_past) in [
        (nn::Mask::None, true, false, true),
        (nn::Mask::Bool, false, false, false),
        (nn::Mask::Float, true, true, true),
        (nn::Mask::None, false, false, false),
    ] {
        let q = f32s(&[bn, hq, l, d], r.vec(bn * hq * l * d, 1.0));
        let k = f32s(&[bn, hkv, l, d], r.vec(bn * hkv * l * d, 1.0));
        let v = f32s(&[bn, hkv, l, d], r.vec(bn * hkv * l * d, 1.0));
        let t = if with_past { past + l } else { l };
        let mw = t - 1; // shorter than the total: the rest is masked
        let m = match mask {
            nn::Mask::None => None,
            nn::Mask::Bool => Some(TensorValue::bool(
                vec![l, mw],
                (0..l * mw).map(|i| i % 3 != 1).collect(),
            )),
            nn::Mask::Float => Some(f32s(&[bn, 1, l, mw], r.vec(bn * l * mw, 2.0))),
        };
        let mut ins: Vec<Option<TensorValue>> = vec![Some(q.clone()), Some(k), Some(v), m.clone()];
        if with_past {
            ins.push(Some(f32s(
                &[bn, hkv, past, d],
                r.vec(bn * hkv * past * d, 1.0),
            )));
            ins.push(Some(f32s(
                &[bn, hkv, past, d],
                r.vec(bn * hkv * past * d, 1.0),
            )));
        }
        let mut attrs = vec![("is_causal", Attr::Int(causal as i64))];
        if softcap {
            attrs.push(("softcap", Attr::Float(0.7)));
        }
        let outs = reference_opt("lpc.attention", &attrs, &ins, 3);
        let spec = nn::AttentionSpec {
            mask,
            causal,
            softcap,
            per_batch_past: false,
        };
        let e = c
            .emulator(&[nn::attention("lpc_attn", &spec).unwrap()])
            .unwrap();
        // K/V as the schedule holds them: the present tensors.
        let mut bufs = vec![
            vec![0u8; bn * hq * l * d * 4],
            bytes(&q),
            bytes(&outs[1]),
            bytes(&outs[2]),
        ];
        if let Some(m) = &m {
            bufs.push(bytes(m));
        }
        let mut args: Vec<A> = (0..bufs.len()).map(A::Buf).collect();
        let p = if with_past { past } else { 0 };
        for v in [hq, l, d, hkv, t, d, p] {
            args.push(A::I(v as i64));
        }
        // q and o strides (batch, head, row) of BHSD.
        for _ in 0..2 {
            args.extend([
                A::I((hq * l * d) as i64),
                A::I((l * d) as i64),
                A::I(d as i64),
            ]);
        }
        if let Some(m) = &m {
            let st = bstrides(&m.shape, &[bn, hq, l, mw]);
            args.extend(st.into_iter().map(A::I));
            args.push(A::I(mw as i64));
        }
        args.push(A::F(1.0 / (d as f32).sqrt()));
        args.push(A::F(0.7));
        launch(&e, "lpc_attn", bn * hq * l, &mut bufs, &args);
        let what = format!("attention {mask:?} causal={causal} softcap={softcap} past={with_past}");
        assert_close(
            &what,
            &value(DType::F32, &q.shape, &bufs[0]),
            &outs[0],
            1e-6,
        );
    }
}

use lpc_runtime::formats::hif8;
use lpc_runtime::Format;
use lpc_target_gpu::kernels::qgemm;

/// One `lpc.qgemm` case: the interpreter's result and the kernels' (rotate,
/// quantize, dot as the schedule launches them).
#[allow(clippy::too_many_arguments)]
fn qgemm_case(
    c: &GpuCompiler,
    wf: Format,
    af: Option<Format>,
    (m, k): (usize, usize),
    parts: &[usize],
    rot: usize,
    bias: bool,
    residual: bool,
    act: Option<&str>,
    seed: u64,
) {
    qgemm_case_scaled(
        c,
        wf,
        af,
        (m, k),
        parts,
        rot,
        bias,
        residual,
        act,
        seed,
        false,
    )
}

/// As [`qgemm_case`]; `scaled`: scaled HiF8 (per-row powers of two of the
/// weights, fixed here as the compiler does, and of the activations).
#[allow(clippy::too_many_arguments)]
fn qgemm_case_scaled(
    c: &GpuCompiler,
    wf: Format,
    af: Option<Format>,
    (m, k): (usize, usize),
    parts: &[usize],
    rot: usize,
    bias: bool,
    residual: bool,
    act: Option<&str>,
    seed: u64,
    scaled: bool,
) {
    let mut r = Rng(seed);
    let ntot: usize = parts.iter().sum();
    let x = f32s(&[m, k], r.vec(m * k, 2.0));
    let mut ins = vec![x.clone()];
    let mut wbufs = Vec::new();
    let mut wexps = Vec::new();
    for &n in parts {
        let mut w = r.vec(n * k, 0.5);
        if scaled {
            let rows = lpc_runtime::formats::AxisLayout::new(&[n, k], 1, wf.block_len());
            wexps.push(lpc_runtime::formats::rowscale::scale_rows(&mut w, &rows));
        }
        let l = wf.layout(&[n, k], -1, true).unwrap();
        let p = wf.quantize(&w, &l).unwrap();
        let bpr = p.len() / n;
        ins.push(TensorValue::with_dtype(
            DType::U8,
            vec![n, bpr],
            lpc_ir::interp::Data::I(p.iter().map(|&v| v as i64).collect()),
        ));
        wbufs.push(p);
    }
    for e in &wexps {
        ins.push(TensorValue::with_dtype(
            DType::I32,
            vec![e.len()],
            lpc_ir::interp::Data::I(e.iter().map(|&v| v as i64).collect()),
        ));
    }
    let bv = f32s(&[ntot], r.vec(ntot, 1.0));
    if bias {
        ins.push(bv.clone());
    }
    let rv = f32s(&[m, ntot], r.vec(m * ntot, 1.0));
    if residual {
        ins.push(rv.clone());
    }
    let mut attrs = vec![
        ("k", Attr::Int(k as i64)),
        ("parts", Attr::Int(parts.len() as i64)),
        ("wformat", Attr::String(wf.name().into())),
        ("wmode", Attr::String(wf.mode_name().into())),
        ("rotate", Attr::Int(rot as i64)),
        ("bias", Attr::Int(bias as i64)),
        ("residual", Attr::Int(residual as i64)),
    ];
    match af {
        Some(af) => {
            attrs.push(("aformat", Attr::String(af.name().into())));
            attrs.push(("amode", Attr::String(af.mode_name().into())));
        }
        None => attrs.push(("aformat", Attr::String("none".into()))),
    }
    if let Some(a) = act {
        attrs.push(("activation", Attr::String(a.into())));
    }
    if scaled {
        attrs.push(("wscale", Attr::Int(1)));
        attrs.push(("ascale", Attr::String("pow2".into())));
    }
    let want = reference("lpc.qgemm", &attrs, &ins, 1).remove(0);
    let a_hif8 = matches!(af, Some(Format::Hif8(_)));
    let a_hif4 = matches!(af, Some(Format::Hif4(_)));

    let spec = qgemm::DotSpec {
        wformat: wf,
        a_mxfp4: af.is_some() && !a_hif8 && !a_hif4,
        a_hif8,
        a_hif4,
        a_scaled: scaled,
        w_scaled: scaled,
        parts: parts.len(),
        bias,
        residual,
        activation: act.map(str::to_string),
    };
    let ks = vec![
        qgemm::rotate("lpc_rot"),
        qgemm::quant_mxfp4("lpc_q", false),
        qgemm::quant_hif8("lpc_q8", false, scaled),
        qgemm::quant_hif4(
            "lpc_q4",
            matches!(af, Some(Format::Hif4(v)) if v.name() == "amct"),
        ),
        qgemm::dot("lpc_dot", &spec).unwrap(),
    ];
    let e = c.emulator(&ks).unwrap();
    let mut xa = bytes(&x);
    if rot > 0 {
        let mut bufs = vec![vec![0u8; m * k * 4], xa];
        let args = [
            A::Buf(0),
            A::Buf(1),
            A::I(k as i64),
            A::I(rot as i64),
            A::F(1.0 / (rot as f32).sqrt()),
        ];
        launch(&e, "lpc_rot", m * k / rot, &mut bufs, &args);
        xa = bufs.swap_remove(0);
    }
    let nb = k.div_ceil(wf.block_len());
    // Buffers: y, activations (codes+exps or x), weights, [lut], [bias], [res].
    let mut bufs = vec![vec![0u8; m * ntot * 4]];
    if a_hif4 {
        let mut qb = vec![vec![0u8; m * nb * 64], vec![0u8; m * nb * 4], xa];
        let args = [
            A::Buf(0),
            A::Buf(1),
            A::Buf(2),
            A::I(k as i64),
            A::I(nb as i64),
        ];
        launch(&e, "lpc_q4", m * nb, &mut qb, &args);
        qb.pop();
        bufs.extend(qb);
    } else if a_hif8 {
        let ta = lpc_runtime::formats::hif8::TA_TABLE.to_vec();
        let mut qb = vec![vec![0u8; m * k], vec![0u8; m * 4], xa, ta];
        let args = [A::Buf(0), A::Buf(1), A::Buf(2), A::Buf(3), A::I(k as i64)];
        launch(&e, "lpc_q8", m, &mut qb, &args);
        qb.truncate(if scaled { 2 } else { 1 });
        bufs.extend(qb);
    } else if af.is_some() {
        let mut qb = vec![vec![0u8; m * nb * 32], vec![0u8; m * nb * 4], xa];
        let args = [
            A::Buf(0),
            A::Buf(1),
            A::Buf(2),
            A::I(k as i64),
            A::I(nb as i64),
        ];
        launch(&e, "lpc_q", m * nb, &mut qb, &args);
        qb.pop();
        bufs.extend(qb);
    } else {
        bufs.push(xa);
    }
    bufs.extend(wbufs);
    for e in &wexps {
        bufs.push(e.iter().flat_map(|v| v.to_le_bytes()).collect());
    }
    if matches!(wf, Format::Hif8(_)) {
        bufs.push(
            hif8::DECODE_F32_BITS
                .iter()
                .flat_map(|b| b.to_le_bytes())
                .collect(),
        );
    }
    if bias {
        bufs.push(bytes(&bv));
    }
    if residual {
        bufs.push(bytes(&rv));
    }
    let mut args: Vec<A> = (0..bufs.len()).map(A::Buf).collect();
    args.extend([A::I(k as i64), A::I(nb as i64), A::I(ntot as i64)]);
    args.extend(parts.iter().map(|&n| A::I(n as i64)));
    launch(&e, "lpc_dot", m * ntot, &mut bufs, &args);
    let what = format!("qgemm {wf:?} x {af:?} k={k} parts={parts:?} rot={rot} {act:?}");
    assert_close(&what, &value(DType::F32, &[m, ntot], &bufs[0]), &want, 1e-6);
}

#[test]
fn qgemm_matches_the_interpreter() {
    let c = GpuCompiler::new();
    let mx = Format::parse("mxfp4", None, None).unwrap();
    let mxa = Format::parse("mxfp4", Some("ties-away"), None).unwrap();
    let h4 = Format::parse("hif4", None, None).unwrap();
    let h8 = Format::parse("hif8", None, None).unwrap();
    // W4A4 MXFP4: a K tail, fused parts, bias, activation, residual, rotation.
    qgemm_case(
        &c,
        mx,
        Some(mx),
        (3, 100),
        &[5, 3],
        0,
        true,
        false,
        Some("silu"),
        1,
    );
    qgemm_case(&c, mx, Some(mx), (4, 64), &[7], 32, false, true, None, 2);
    qgemm_case(
        &c,
        mx,
        Some(mx),
        (2, 128),
        &[4, 4, 2],
        64,
        true,
        true,
        Some("gelu"),
        3,
    );
    // Weight-only: every weight format, f32 activations.
    qgemm_case(&c, mx, None, (3, 70), &[6], 0, true, false, None, 4);
    qgemm_case(&c, mxa, None, (2, 64), &[3], 0, false, false, None, 5);
    qgemm_case(
        &c,
        h4,
        None,
        (3, 130),
        &[5, 2],
        0,
        false,
        true,
        Some("gelu_tanh"),
        6,
    );
    qgemm_case(&c, h8, None, (2, 40), &[4], 0, true, false, None, 7);
    // W4A4 HiF4, both encoder variants, a unit tail, rotation.
    let h4a = Format::parse("hif4", None, Some("amct")).unwrap();
    qgemm_case(
        &c,
        h4,
        Some(h4),
        (3, 100),
        &[5, 3],
        0,
        true,
        false,
        Some("silu"),
        11,
    );
    qgemm_case(
        &c,
        h4a,
        Some(h4a),
        (2, 128),
        &[4],
        64,
        false,
        true,
        None,
        12,
    );
    qgemm_case(
        &c,
        h4,
        Some(h4),
        (4, 256),
        &[3, 3],
        32,
        true,
        true,
        Some("gelu"),
        13,
    );
    // W8A8 HiF8, plain and scaled (per-row powers of two on both sides).
    qgemm_case(&c, h8, Some(h8), (3, 48), &[5, 3], 0, true, false, None, 8);
    qgemm_case_scaled(
        &c,
        h8,
        Some(h8),
        (3, 48),
        &[5, 3],
        0,
        false,
        true,
        Some("silu"),
        9,
        true,
    );
    qgemm_case_scaled(&c, h8, None, (2, 40), &[6], 0, true, false, None, 10, true);
}

use lpc_target_gpu::kernels::shape;

fn contiguous(shape: &[usize]) -> Vec<i64> {
    let mut s = vec![0i64; shape.len()];
    let mut acc = 1i64;
    for a in (0..shape.len()).rev() {
        s[a] = acc;
        acc *= shape[a] as i64;
    }
    s
}

/// One strided copy launch: box `d`, source strides/offset, destination
/// strides/offset.
fn copy_launch(
    e: &lpc_target_gpu::emulate::Emulator,
    y: &mut Vec<u8>,
    x: &[u8],
    d: &[usize],
    (xs, xoff): (&[i64], i64),
    (ys, yoff): (&[i64], i64),
) {
    let mut bufs = vec![std::mem::take(y), x.to_vec()];
    let mut args = vec![A::Buf(0), A::Buf(1)];
    args.extend(d.iter().map(|&v| A::I(v as i64)));
    args.extend(xs.iter().map(|&v| A::I(v)));
    args.extend(ys.iter().map(|&v| A::I(v)));
    args.extend([A::I(xoff), A::I(yoff)]);
    launch(e, "lpc_copy", d.iter().product(), &mut bufs, &args);
    *y = bufs.swap_remove(0);
}

#[test]
fn data_movement_matches_the_interpreter() {
    let c = GpuCompiler::new();
    let e = c
        .emulator(&[shape::copy("lpc_copy", 3, 4).unwrap()])
        .unwrap();
    let mut r = Rng(3);
    let x = f32s(&[2, 3, 4], r.vec(24, 1.0));
    let xs = contiguous(&x.shape);
    // Transpose [2,3,4] by (2, 0, 1): output axis a reads input axis perm[a].
    let want = reference(
        "Transpose",
        &[("perm", Attr::Ints(vec![2, 0, 1]))],
        std::slice::from_ref(&x),
        1,
    )
    .remove(0);
    let mut y = vec![0u8; 96];
    let d = [4, 2, 3];
    let ys = contiguous(&d);
    copy_launch(
        &e,
        &mut y,
        &bytes(&x),
        &d,
        (&[xs[2], xs[0], xs[1]], 0),
        (&ys, 0),
    );
    assert_close("Transpose", &value(DType::F32, &d, &y), &want, 0.0);
    // Slice axis 2 from the end backwards with step -2: [3, 1].
    let st = TensorValue::i64(vec![1], vec![-1]);
    let en = TensorValue::i64(vec![1], vec![-5]);
    let ax = TensorValue::i64(vec![1], vec![2]);
    let sp = TensorValue::i64(vec![1], vec![-2]);
    let want = reference("Slice", &[], &[x.clone(), st, en, ax, sp], 1).remove(0);
    let d = [2, 3, 2];
    let mut y = vec![0u8; 48];
    copy_launch(
        &e,
        &mut y,
        &bytes(&x),
        &d,
        (&[xs[0], xs[1], -2], 3),
        (&contiguous(&d), 0),
    );
    assert_close("Slice", &value(DType::F32, &d, &y), &want, 0.0);
    // Concat of x and a [2, 1, 4] tensor on axis 1: two launches.
    let z = f32s(&[2, 1, 4], r.vec(8, 1.0));
    let want = reference(
        "Concat",
        &[("axis", Attr::Int(1))],
        &[x.clone(), z.clone()],
        1,
    )
    .remove(0);
    let od = [2, 4, 4];
    let os = contiguous(&od);
    let mut y = vec![0u8; 128];
    copy_launch(&e, &mut y, &bytes(&x), &x.shape, (&xs, 0), (&os, 0));
    copy_launch(
        &e,
        &mut y,
        &bytes(&z),
        &z.shape,
        (&contiguous(&z.shape), 0),
        (&os, 3 * os[1]),
    );
    assert_close("Concat", &value(DType::F32, &od, &y), &want, 0.0);
    // Expand [2, 1, 4] to [2, 3, 4]: stride 0 on the broadcast axis.
    let shp = TensorValue::i64(vec![3], vec![2, 3, 4]);
    let want = reference("Expand", &[], &[z.clone(), shp], 1).remove(0);
    let mut y = vec![0u8; 96];
    let zs = contiguous(&z.shape);
    copy_launch(
        &e,
        &mut y,
        &bytes(&z),
        &[2, 3, 4],
        (&[zs[0], 0, zs[2]], 0),
        (&xs, 0),
    );
    assert_close("Expand", &value(DType::F32, &[2, 3, 4], &y), &want, 0.0);
}

#[test]
fn gather_matches_the_interpreter() {
    let c = GpuCompiler::new();
    let e = c
        .emulator(&[shape::gather("lpc_gather", 4).unwrap()])
        .unwrap();
    let mut r = Rng(4);
    let table = f32s(&[10, 6], r.vec(60, 1.0));
    let ids = TensorValue::i64(vec![2, 3], vec![0, 9, -1, 4, 4, -10]);
    let want = reference(
        "Gather",
        &[("axis", Attr::Int(0))],
        &[table.clone(), ids.clone()],
        1,
    )
    .remove(0);
    let mut bufs = vec![
        vec![0u8; 6 * 6 * 4],
        bytes(&table),
        bytes(&ids),
        vec![0u8; 4],
    ];
    let args = [
        A::Buf(0),
        A::Buf(1),
        A::Buf(2),
        A::Buf(3),
        A::I(6),
        A::I(6),
        A::I(10),
    ];
    launch(&e, "lpc_gather", 36, &mut bufs, &args);
    assert_close(
        "Gather",
        &value(DType::F32, &[2, 3, 6], &bufs[0]),
        &want,
        0.0,
    );
    assert_eq!(bufs[3], [0, 0, 0, 0]);
    // An index out of range sets the error flag.
    let bad = TensorValue::i64(vec![1], vec![10]);
    let mut bufs = vec![vec![0u8; 6 * 4], bytes(&table), bytes(&bad), vec![0u8; 4]];
    let args = [
        A::Buf(0),
        A::Buf(1),
        A::Buf(2),
        A::Buf(3),
        A::I(1),
        A::I(6),
        A::I(10),
    ];
    launch(&e, "lpc_gather", 6, &mut bufs, &args);
    assert_eq!(bufs[3], [1, 0, 0, 0]);
}

/// GroupQueryAttention's cache semantics: per-batch past lengths from
/// `seqlens_k`, the new rows written at each entry's offset, keys past the
/// valid length masked; cache assembly by the `kv_rows` kernels.
#[test]
fn gqa_cache_attention_matches_the_interpreter() {
    let c = GpuCompiler::new();
    let mut r = Rng(21);
    let (bn, hq, hkv, l, d, cap) = (2usize, 4usize, 2usize, 2usize, 8usize, 5usize);
    // Valid lengths 3 + 2 and 5 + 2 - ... : seqlens_k = total valid - 1.
    let seqlens = [3i64, 6];
    let q = f32s(&[bn, l, hq * d], r.vec(bn * l * hq * d, 1.0));
    let k = f32s(&[bn, l, hkv * d], r.vec(bn * l * hkv * d, 1.0));
    let v = f32s(&[bn, l, hkv * d], r.vec(bn * l * hkv * d, 1.0));
    let pk = f32s(&[bn, hkv, cap, d], r.vec(bn * hkv * cap * d, 1.0));
    let pv = f32s(&[bn, hkv, cap, d], r.vec(bn * hkv * cap * d, 1.0));
    let sl = TensorValue::with_dtype(
        DType::I32,
        vec![bn],
        lpc_ir::interp::Data::I(seqlens.to_vec()),
    );
    let ins = vec![
        Some(q.clone()),
        Some(k.clone()),
        Some(v.clone()),
        None,
        Some(pk.clone()),
        Some(pv.clone()),
        Some(sl),
    ];
    let attrs = [
        ("q_num_heads", Attr::Int(hq as i64)),
        ("kv_num_heads", Attr::Int(hkv as i64)),
    ];
    let outs = reference_opt("lpc.attention", &attrs, &ins, 3);
    let t = outs[1].shape[2];
    let pastb: Vec<i64> = seqlens.iter().map(|&s| s + 1 - l as i64).collect();
    let pb: Vec<u8> = pastb.iter().flat_map(|v| v.to_le_bytes()).collect();
    let ks = vec![
        shape::zero("lpc_zero", 4).unwrap(),
        shape::kv_rows("lpc_cached", true),
        shape::kv_rows("lpc_new", false),
        nn::attention(
            "lpc_attn",
            &nn::AttentionSpec {
                mask: nn::Mask::None,
                causal: false,
                softcap: false,
                per_batch_past: true,
            },
        )
        .unwrap(),
    ];
    let e = c.emulator(&ks).unwrap();
    let plen = bn * hkv * t * d;
    let pst = [(hkv * t * d) as i64, (t * d) as i64, d as i64];
    let mut present = Vec::new();
    for (old, new) in [(&pk, &k), (&pv, &v)] {
        let mut bufs = vec![vec![0xFFu8; plen * 4]];
        launch(&e, "lpc_zero", plen, &mut bufs, &[A::Buf(0)]);
        let mut y = bufs.pop().unwrap();
        for (src, cached) in [(old, true), (new, false)] {
            let (rows, xs) = if cached {
                (cap, [(hkv * cap * d) as i64, (cap * d) as i64, d as i64])
            } else {
                // [B, L, Hkv·D]: batch, head, row strides.
                (l, [(l * hkv * d) as i64, d as i64, (hkv * d) as i64])
            };
            let mut bufs = vec![y, bytes(src), pb.clone()];
            let mut args = vec![A::Buf(0), A::Buf(1), A::Buf(2)];
            args.extend([hkv, rows, d].iter().map(|&v| A::I(v as i64)));
            args.extend(xs.iter().map(|&v| A::I(v)));
            args.extend(pst.iter().map(|&v| A::I(v)));
            let name = if cached { "lpc_cached" } else { "lpc_new" };
            launch(&e, name, bn * hkv * rows * d, &mut bufs, &args);
            y = bufs.swap_remove(0);
        }
        present.push(y);
    }
    assert_close(
        "present key",
        &value(DType::F32, &outs[1].shape, &present[0]),
        &outs[1],
        0.0,
    );
    assert_close(
        "present value",
        &value(DType::F32, &outs[2].shape, &present[1]),
        &outs[2],
        0.0,
    );
    let mut bufs = vec![
        vec![0u8; bn * l * hq * d * 4],
        bytes(&q),
        present[0].clone(),
        present[1].clone(),
        pb.clone(),
    ];
    let mut args: Vec<A> = (0..bufs.len()).map(A::Buf).collect();
    for v in [hq, l, d, hkv, t, d, 0] {
        args.push(A::I(v as i64));
    }
    // q [B, L, Hq·D] and o alike: batch, head, row strides.
    for _ in 0..2 {
        args.extend([
            A::I((l * hq * d) as i64),
            A::I(d as i64),
            A::I((hq * d) as i64),
        ]);
    }
    args.push(A::F(1.0 / (d as f32).sqrt()));
    args.push(A::F(0.0));
    launch(&e, "lpc_attn", bn * hq * l, &mut bufs, &args);
    assert_close(
        "gqa attention",
        &value(DType::F32, &outs[0].shape, &bufs[0]),
        &outs[0],
        1e-6,
    );
}

/// The activation quantizers against the runtime's encoders, bit for bit:
/// MXFP4 and HiF4 codes (as the identities' integers) and scales, HiF8
/// codes and row exponents, on rows with tails, zeros, tiny and huge values.
#[test]
fn activation_quantizers_are_bit_exact() {
    use lpc_runtime::formats::{hif4, mxfp4, rowscale, Hif4Unit, Mxfp4Block};
    let c = GpuCompiler::new();
    let mut r = Rng(77);
    let (m, k) = (5usize, 200usize);
    let mut x = r.vec(m * k, 3.0);
    // Special rows: a zero row, subnormals, large magnitudes.
    for j in 0..k {
        x[k + j] = 0.0;
        x[2 * k + j] *= 1e-39;
        x[3 * k + j] *= 1e30;
    }
    let xb: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    for (name, fmt) in [
        ("mxfp4", "rne"),
        ("mxfp4", "ties-away"),
        ("hif4", "consortium"),
        ("hif4", "amct"),
    ] {
        let f = if name == "hif4" {
            Format::parse(name, None, Some(fmt)).unwrap()
        } else {
            Format::parse(name, Some(fmt), None).unwrap()
        };
        let bl = f.block_len();
        let nb = k.div_ceil(bl);
        let kern = if name == "hif4" {
            qgemm::quant_hif4("lpc_q", fmt == "amct")
        } else {
            qgemm::quant_mxfp4("lpc_q", fmt == "ties-away")
        };
        let e = c.emulator(&[kern]).unwrap();
        let mut bufs = vec![vec![0u8; m * nb * bl], vec![0u8; m * nb * 4], xb.clone()];
        let args = [
            A::Buf(0),
            A::Buf(1),
            A::Buf(2),
            A::I(k as i64),
            A::I(nb as i64),
        ];
        launch(&e, "lpc_q", m * nb, &mut bufs, &args);
        let l = f.layout(&[m, k], -1, true).unwrap();
        let packed = f.quantize(&x, &l).unwrap();
        for u in 0..m * nb {
            let blk = &packed[u * f.block_bytes()..(u + 1) * f.block_bytes()];
            let got_codes: Vec<i8> = bufs[0][u * bl..(u + 1) * bl]
                .iter()
                .map(|&v| v as i8)
                .collect();
            let got_scale = &bufs[1][u * 4..u * 4 + 4];
            if name == "hif4" {
                let unit: Hif4Unit = *bytemuck::from_bytes(blk);
                assert_eq!(got_codes, unit.int_codes().to_vec(), "{fmt} unit {u}");
                let s = f32::from_le_bytes(got_scale.try_into().unwrap());
                let want = hif4::e6m2_to_f32(unit.meta[0]);
                assert!(
                    s == want || (s.is_nan() && want.is_nan()),
                    "{fmt} unit {u}: {s} vs {want}"
                );
            } else {
                let b: Mxfp4Block = *bytemuck::from_bytes(blk);
                let want: Vec<i8> = (0..32)
                    .map(|i| mxfp4::E2M1_X2[b.code(i) as usize])
                    .collect();
                assert_eq!(got_codes, want, "{fmt} block {u}");
                assert_eq!(
                    i32::from_le_bytes(got_scale.try_into().unwrap()),
                    b.scale as i32
                );
            }
        }
    }
    for saturate in [false, true] {
        let mode = if saturate { "saturate" } else { "ta" };
        let f = Format::parse("hif8", Some(mode), None).unwrap();
        let e = c
            .emulator(&[qgemm::quant_hif8("lpc_q", saturate, true)])
            .unwrap();
        let ta = lpc_runtime::formats::hif8::TA_TABLE.to_vec();
        let mut bufs = vec![vec![0u8; m * k], vec![0u8; m * 4], xb.clone(), ta];
        let args = [A::Buf(0), A::Buf(1), A::Buf(2), A::Buf(3), A::I(k as i64)];
        launch(&e, "lpc_q", m, &mut bufs, &args);
        let mut xs = x.clone();
        let l = lpc_runtime::formats::AxisLayout::new(&[m, k], 1, 1);
        let exps = rowscale::scale_rows(&mut xs, &l);
        let fl = f.layout(&[m, k], -1, true).unwrap();
        let codes = f.quantize(&xs, &fl).unwrap();
        assert_eq!(bufs[0], codes, "hif8 {mode} codes");
        let got: Vec<i32> = bufs[1]
            .chunks(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(got, exps, "hif8 row exponents");
    }
}
