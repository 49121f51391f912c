//! Quantization ops, executed with the runtime's reference codecs:
//! `lpc.quantize`, `lpc.dequantize`, `lpc.rotate` and `lpc.qgemm`.
//!
//! Packed tensors are `u8` with the quantized axis removed and the packed
//! bytes of each row last: quantizing `[.., K, ..]` along K gives
//! `[<other dims in order>, ceil(K / block) * block_bytes]`, the row layout of
//! the runtime's bulk paths. A weight `[K, N]` (or `[N, K]`) thus packs to
//! `[N, bytes]` either way.

use super::util::axis as norm_axis;
use super::value::{Data, TensorValue};
use super::{OpCtx, R};
use crate::{DType, Node};
use lpc_runtime::formats::rowscale;
use lpc_runtime::formats::Format;
use lpc_runtime::hadamard;

/// A format from its op attributes (`format`, `mode`); `None` for `none`.
pub fn format_of(name: &str, mode: Option<&str>) -> R<Option<Format>> {
    if name == "none" {
        return Ok(None);
    }
    let (rounding, variant) = if name == "hif4" {
        (None, mode)
    } else {
        (mode, None)
    };
    Format::parse(name, rounding, variant)
        .map(Some)
        .map_err(|e| e.to_string())
}

fn attr_format(c: &OpCtx, key: &str, mode_key: &str) -> R<Option<Format>> {
    node_format(c.node, key, mode_key)
}

fn node_format(node: &Node, key: &str, mode_key: &str) -> R<Option<Format>> {
    let name = node
        .string(key)
        .ok_or_else(|| format!("`{key}` attribute is required"))?;
    format_of(name, node.string(mode_key))
}

fn bytes_of(v: &TensorValue) -> R<Vec<u8>> {
    match &v.data {
        Data::I(b) if v.dtype == DType::U8 => Ok(b.iter().map(|&x| x as u8).collect()),
        _ => Err("packed operand must be u8".into()),
    }
}

fn packed_value(shape: Vec<usize>, bytes: Vec<u8>) -> TensorValue {
    TensorValue::with_dtype(
        DType::U8,
        shape,
        Data::I(bytes.into_iter().map(|b| b as i64).collect()),
    )
}

/// The shape of `dims` packed along `axis`: the other dims in order, then
/// the bytes of one row's blocks (the last one zero-padded).
pub fn packed_shape(dims: &[usize], axis: usize, f: Format) -> Vec<usize> {
    let mut shape: Vec<usize> = dims
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != axis)
        .map(|(_, &d)| d)
        .collect();
    shape.push(dims[axis].div_ceil(f.block_len()) * f.block_bytes());
    shape
}

fn pow2_scaled(c: &OpCtx) -> R<bool> {
    match c.node.string("scale") {
        None | Some("none") => Ok(false),
        Some("pow2") => Ok(true),
        Some(o) => Err(format!("unknown scale `{o}` (expected none or pow2)")),
    }
}

fn exps_value(shape: Vec<usize>, e: &[i32]) -> TensorValue {
    TensorValue::with_dtype(
        DType::I32,
        shape,
        Data::I(e.iter().map(|&v| v as i64).collect()),
    )
}

fn exps_of(v: &TensorValue, rows: usize) -> R<Vec<i32>> {
    match &v.data {
        Data::I(e) if e.len() == rows => Ok(e.iter().map(|&x| x as i32).collect()),
        _ => Err(format!("row exponents must be {rows} integers")),
    }
}

/// `lpc.quantize(x) {format, mode, axis, scale?}` -> packed u8; with
/// `scale = "pow2"` each row is first scaled by its own power of two
/// (`rowscale`), returned as a second output `[rows]` of exponents.
pub fn quantize(c: &OpCtx) -> R<Vec<TensorValue>> {
    let a = c.input(0)?;
    let f = attr_format(c, "format", "mode")?.ok_or("cannot quantize to `none`")?;
    let ax = norm_axis(c.int("axis", -1), a.rank())?;
    let l = f
        .layout(&a.shape, ax as isize, true)
        .map_err(|e| e.to_string())?;
    let shape = packed_shape(&a.shape, ax, f);
    // `search = 1`: the scale search of weights (`--scale-search`).
    let search = c.int("search", 0) != 0;
    let enc = |x: &[f32]| {
        if search {
            f.quantize_search(x, &l)
        } else {
            f.quantize(x, &l)
        }
    };
    if pow2_scaled(c)? {
        let mut x = c.f32_in(0)?.to_vec();
        let e = rowscale::scale_rows(&mut x, &l);
        let bytes = enc(&x).map_err(|e| e.to_string())?;
        let rows = shape[..shape.len() - 1].to_vec();
        return Ok(vec![packed_value(shape, bytes), exps_value(rows, &e)]);
    }
    let bytes = enc(c.f32_in(0)?).map_err(|e| e.to_string())?;
    Ok(vec![packed_value(shape, bytes)])
}

/// `lpc.dequantize(p, exps?) {format, mode, axis, axis_len, scale?}` -> f32 in
/// the original shape (rows multiplied by `2^-e` when scaled).
pub fn dequantize(c: &OpCtx) -> R<Vec<TensorValue>> {
    let p = c.input(0)?;
    let f = attr_format(c, "format", "mode")?.ok_or("cannot dequantize from `none`")?;
    let k = c
        .node
        .int("axis_len")
        .ok_or("`axis_len` attribute is required")? as usize;
    let rank = p.rank();
    let ax = norm_axis(c.int("axis", -1), rank)?;
    let mut shape = p.shape[..rank - 1].to_vec();
    shape.insert(ax, k);
    let l = f
        .layout(&shape, ax as isize, true)
        .map_err(|e| e.to_string())?;
    let mut y = f.dequantize(&bytes_of(p)?, &l).map_err(|e| e.to_string())?;
    if pow2_scaled(c)? {
        let e = exps_of(c.input(1)?, l.rows())?;
        rowscale::unscale_rows(&mut y, &l, &e);
    }
    Ok(vec![TensorValue::f32(shape, y)])
}

/// `lpc.rotate(x) {block, axis}`: the block Hadamard rotation along an axis.
pub fn rotate(c: &OpCtx) -> R<Vec<TensorValue>> {
    let a = c.input(0)?;
    let b = c.int("block", 32) as usize;
    let ax = norm_axis(c.int("axis", -1), a.rank())?;
    let k = a.shape[ax];
    if !b.is_power_of_two() || k % b != 0 {
        return Err(format!(
            "axis length {k} is not a multiple of the rotation block {b}"
        ));
    }
    let mut x = c.f32_in(0)?.to_vec();
    hadamard::rotate_axis(&mut x, &a.shape, ax, b);
    Ok(vec![TensorValue::with_dtype(
        a.dtype,
        a.shape.clone(),
        Data::F(x),
    )])
}

/// `lpc.qgemm(x, P_1, ..., P_n, E_1.., bias?, residual?) {parts, k, wformat,
/// wmode, aformat, amode, rotate, wscale, ascale, bias, residual,
/// activation?}`: rotate (when `rotate` > 0) and quantize the activation rows
/// along K (each row scaled by its own power of two first when `ascale =
/// "pow2"`), multiply with the packed weights (each `[out_i, bytes]`, with
/// per-row exponents `E_i` when `wscale = 1`), accumulate the exact products
/// in f64 in K order, add the bias, apply the activation, add the residual.
pub fn qgemm(c: &OpCtx) -> R<Vec<TensorValue>> {
    let xt = c.input(0)?;
    let k = c.node.int("k").ok_or("`k` attribute is required")? as usize;
    if xt.shape.last() != Some(&k) {
        return Err(format!("x {:?} does not have {k} features", xt.shape));
    }
    let parts = c.int("parts", 1).max(1) as usize;
    let wf = attr_format(c, "wformat", "wmode")?.ok_or("weights must be quantized")?;
    let rows = xt.len() / k.max(1);
    let x = qgemm_activations(c.node, c.f32_in(0)?)?;
    // Weights `[n, k]` per part, rows multiplied by `2^-e` when scaled.
    let wscaled = c.int("wscale", 0) != 0;
    let mut ws = Vec::with_capacity(parts);
    for i in 0..parts {
        let p = c.input(1 + i)?;
        let n = *p.shape.first().ok_or("packed weight must be 2-D")?;
        let l = wf.layout(&[n, k], -1, true).map_err(|e| e.to_string())?;
        let mut w = wf
            .dequantize(&bytes_of(p)?, &l)
            .map_err(|e| e.to_string())?;
        if wscaled {
            let e = exps_of(c.input(1 + parts + i)?, n)?;
            rowscale::unscale_rows(&mut w, &l, &e);
        }
        ws.push((w, n));
    }
    // Operands after the weights: their exponents (wscale), bias, residual.
    let after_w = 1 + parts + if wscaled { parts } else { 0 };
    let n_total: usize = ws.iter().map(|w| w.1).sum();
    let has_bias = c
        .node
        .int("bias")
        .map_or(c.opt(after_w).is_some(), |b| b != 0);
    let bias = if has_bias {
        let b = c.input(after_w)?.as_f32().ok_or("bias must be float")?;
        if b.len() != n_total {
            return Err("bias length differs from the output features".into());
        }
        Some(b)
    } else {
        None
    };
    let residual = if c.int("residual", 0) != 0 {
        let r = c.input(after_w + has_bias as usize)?;
        if r.len() != rows * n_total {
            return Err(format!("residual {:?} does not match the output", r.shape));
        }
        Some(r.as_f32().ok_or("residual must be float")?)
    } else {
        None
    };
    let act: fn(f32) -> f32 = match c.node.string("activation") {
        None => |v| v,
        Some("silu") => lpc_runtime::math::silu_f32,
        Some("gelu") => |v| {
            (0.5 * v as f64 * (1.0 + super::util::erf(v as f64 / std::f64::consts::SQRT_2))) as f32
        },
        Some("gelu_tanh") => |v| {
            let v = v as f64;
            (0.5 * v
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh()))
                as f32
        },
        Some(a) => return Err(format!("unknown epilogue activation `{a}`")),
    };
    let mut out = vec![0f32; rows * n_total];
    for r in 0..rows {
        let xr = &x[r * k..(r + 1) * k];
        let mut off = 0;
        for (w, n) in &ws {
            for j in 0..*n {
                let wr = &w[j * k..(j + 1) * k];
                let acc: f64 = xr.iter().zip(wr).map(|(&a, &b)| a as f64 * b as f64).sum();
                let y = act((acc + bias.map_or(0.0, |b| b[off + j] as f64)) as f32);
                let i = r * n_total + off + j;
                out[i] = residual.map_or(y, |res| y + res[i]);
            }
            off += n;
        }
    }
    let mut shape = xt.shape.clone();
    *shape.last_mut().expect("rank >= 1") = n_total;
    Ok(vec![TensorValue::with_dtype(xt.dtype, shape, Data::F(out))])
}

/// What `lpc.qgemm` multiplies its weights with: the rows of `x` (length
/// `k`) rotated (`rotate` > 0) and quantized-dequantized in the activation
/// format (`aformat`; each row scaled by its own power of two first when
/// `ascale = "pow2"`). Calibration uses it to see the layer's real inputs.
pub fn qgemm_activations(node: &Node, x: &[f32]) -> R<Vec<f32>> {
    let k = node.int("k").ok_or("`k` attribute is required")? as usize;
    let af = node_format(node, "aformat", "amode")?;
    let rot = node.int("rotate").unwrap_or(0) as usize;
    if k == 0 || !x.len().is_multiple_of(k) {
        return Err(format!("{} values are not rows of {k}", x.len()));
    }
    let rows = x.len() / k;
    let mut x = x.to_vec();
    if rot > 0 {
        if !k.is_multiple_of(rot) {
            return Err(format!(
                "{k} features are not a multiple of the rotation block {rot}"
            ));
        }
        hadamard::rotate_rows(&mut x, k, rot);
    }
    if let Some(af) = af {
        let l = af.layout(&[rows, k], -1, true).map_err(|e| e.to_string())?;
        let ascaled = node.string("ascale") == Some("pow2");
        let e = if ascaled {
            rowscale::scale_rows(&mut x, &l)
        } else {
            Vec::new()
        };
        let p = af.quantize(&x, &l).map_err(|e| e.to_string())?;
        x = af.dequantize(&p, &l).map_err(|e| e.to_string())?;
        if ascaled {
            rowscale::unscale_rows(&mut x, &l, &e);
        }
    }
    Ok(x)
}
