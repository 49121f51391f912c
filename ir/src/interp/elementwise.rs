//! Elementwise ops with numpy broadcasting.

use super::util::{broadcast_index, broadcast_shapes, erf};
use super::value::{is_float, round_to, Data, TensorValue};
use super::{OpCtx, R};
use crate::DType;
use lpc_runtime::math;

/// Applies `f` over the broadcast of `a` and `b`.
fn zip2<A: Copy, B: Copy, T>(
    a: &[A],
    ash: &[usize],
    b: &[B],
    bsh: &[usize],
    f: impl Fn(A, B) -> T,
) -> R<(Vec<T>, Vec<usize>)> {
    let shape = broadcast_shapes(&[ash, bsh])?;
    if ash == bsh {
        return Ok((a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect(), shape));
    }
    let (ia, ib) = (broadcast_index(ash, &shape), broadcast_index(bsh, &shape));
    Ok((
        ia.iter().zip(&ib).map(|(&i, &j)| f(a[i], b[j])).collect(),
        shape,
    ))
}

fn float_op(op: &str, fmod: bool) -> R<fn(f32, f32) -> f32> {
    Ok(match op {
        "Add" => |a, b| a + b,
        "Sub" => |a, b| a - b,
        "Mul" => |a, b| a * b,
        "Div" => |a, b| a / b,
        "Pow" => |a: f32, b: f32| a.powf(b),
        "Max" => |a: f32, b: f32| {
            if a.is_nan() || b.is_nan() {
                f32::NAN
            } else {
                a.max(b)
            }
        },
        "Min" => |a: f32, b: f32| {
            if a.is_nan() || b.is_nan() {
                f32::NAN
            } else {
                a.min(b)
            }
        },
        "Mod" if fmod => |a: f32, b: f32| a % b,
        "Mod" => |a: f32, b: f32| {
            let r = a % b;
            if r != 0.0 && (r < 0.0) != (b < 0.0) {
                r + b
            } else {
                r
            }
        },
        _ => return Err(format!("no float form of {op}")),
    })
}

fn int_op(op: &str, fmod: bool) -> R<fn(i64, i64) -> i64> {
    Ok(match op {
        "Add" => |a: i64, b| a.wrapping_add(b),
        "Sub" => |a: i64, b| a.wrapping_sub(b),
        "Mul" => |a: i64, b| a.wrapping_mul(b),
        // C-style truncation, as onnxruntime; division by zero gives 0 here
        // rather than trapping.
        "Div" => |a: i64, b: i64| a.checked_div(b).unwrap_or(0),
        "Pow" => |a: i64, b: i64| if b < 0 { 0 } else { a.wrapping_pow(b as u32) },
        "Max" => |a: i64, b| a.max(b),
        "Min" => |a: i64, b| a.min(b),
        "Mod" if fmod => |a: i64, b: i64| a.checked_rem(b).unwrap_or(0),
        "Mod" => |a: i64, b: i64| {
            let r = a.checked_rem(b).unwrap_or(0);
            if r != 0 && (r < 0) != (b < 0) {
                r + b
            } else {
                r
            }
        },
        _ => return Err(format!("no integer form of {op}")),
    })
}

/// Add, Sub, Mul, Div, Pow, Mod, Max, Min (variadic Max/Min fold left).
pub fn arith(c: &OpCtx) -> R<Vec<TensorValue>> {
    let op = c.node.op.as_str();
    let fmod = c.int("fmod", 0) != 0;
    let mut acc = c.input(0)?.clone();
    for k in 1..c.inputs.len() {
        let b = c.input(k)?;
        acc = match (&acc.data, &b.data) {
            (Data::F(x), Data::F(y)) => {
                let f = float_op(op, fmod)?;
                let d = acc.dtype;
                let (v, s) = zip2(x, &acc.shape, y, &b.shape, |p, q| round_to(d, f(p, q)))?;
                TensorValue::with_dtype(d, s, Data::F(v))
            }
            // Pow with an integer exponent on a float base.
            (Data::F(x), Data::I(y)) if op == "Pow" => {
                let d = acc.dtype;
                let (v, s) = zip2(x, &acc.shape, y, &b.shape, |p, q| {
                    round_to(d, p.powf(q as f32))
                })?;
                TensorValue::with_dtype(d, s, Data::F(v))
            }
            (Data::I(x), Data::I(y)) => {
                let f = int_op(op, fmod)?;
                let (v, s) = zip2(x, &acc.shape, y, &b.shape, f)?;
                TensorValue::with_dtype(acc.dtype, s, Data::I(v))
            }
            _ => {
                return Err(format!(
                    "operand types {} and {} do not match",
                    acc.dtype, b.dtype
                ))
            }
        };
    }
    Ok(vec![acc])
}

pub fn compare(c: &OpCtx) -> R<Vec<TensorValue>> {
    let (a, b) = (c.input(0)?, c.input(1)?);
    let op = c.node.op.as_str();
    let cmp = |o: std::cmp::Ordering| -> bool {
        use std::cmp::Ordering::*;
        match op {
            "Equal" => o == Equal,
            "Less" => o == Less,
            "LessOrEqual" => o != Greater,
            "Greater" => o == Greater,
            _ => o != Less,
        }
    };
    let (v, s) = match (&a.data, &b.data) {
        (Data::F(x), Data::F(y)) => zip2(x, &a.shape, y, &b.shape, |p, q| {
            p.partial_cmp(&q).is_some_and(cmp)
        })?,
        (Data::I(x), Data::I(y)) => zip2(x, &a.shape, y, &b.shape, |p, q| cmp(p.cmp(&q)))?,
        (Data::B(x), Data::B(y)) => zip2(x, &a.shape, y, &b.shape, |p, q| cmp(p.cmp(&q)))?,
        _ => {
            return Err(format!(
                "operand types {} and {} do not match",
                a.dtype, b.dtype
            ))
        }
    };
    Ok(vec![TensorValue::bool(s, v)])
}

pub fn logic(c: &OpCtx) -> R<Vec<TensorValue>> {
    let (a, b) = (c.input(0)?, c.input(1)?);
    let (Some(x), Some(y)) = (a.as_bool(), b.as_bool()) else {
        return Err("operands must be bool".into());
    };
    let f: fn(bool, bool) -> bool = match c.node.op.as_str() {
        "And" => |p, q| p && q,
        "Or" => |p, q| p || q,
        _ => |p, q| p ^ q,
    };
    let (v, s) = zip2(x, &a.shape, y, &b.shape, f)?;
    Ok(vec![TensorValue::bool(s, v)])
}

pub fn not(c: &OpCtx) -> R<Vec<TensorValue>> {
    let a = c.input(0)?;
    let x = a.as_bool().ok_or("operand must be bool")?;
    Ok(vec![TensorValue::bool(
        a.shape.clone(),
        x.iter().map(|v| !v).collect(),
    )])
}

pub fn where_(c: &OpCtx) -> R<Vec<TensorValue>> {
    let (cond, x, y) = (c.input(0)?, c.input(1)?, c.input(2)?);
    let cv = cond.as_bool().ok_or("condition must be bool")?;
    let shape = broadcast_shapes(&[&cond.shape, &x.shape, &y.shape])?;
    let (ic, ix, iy) = (
        broadcast_index(&cond.shape, &shape),
        broadcast_index(&x.shape, &shape),
        broadcast_index(&y.shape, &shape),
    );
    let pick = |k: usize| cv[ic[k]];
    let data = match (&x.data, &y.data) {
        (Data::F(a), Data::F(b)) => Data::F(
            (0..ic.len())
                .map(|k| if pick(k) { a[ix[k]] } else { b[iy[k]] })
                .collect(),
        ),
        (Data::I(a), Data::I(b)) => Data::I(
            (0..ic.len())
                .map(|k| if pick(k) { a[ix[k]] } else { b[iy[k]] })
                .collect(),
        ),
        (Data::B(a), Data::B(b)) => Data::B(
            (0..ic.len())
                .map(|k| if pick(k) { a[ix[k]] } else { b[iy[k]] })
                .collect(),
        ),
        _ => {
            return Err(format!(
                "operand types {} and {} do not match",
                x.dtype, y.dtype
            ))
        }
    };
    Ok(vec![TensorValue::with_dtype(x.dtype, shape, data)])
}

pub fn unary(c: &OpCtx) -> R<Vec<TensorValue>> {
    let a = c.input(0)?;
    let op = c.node.op.as_str();
    if let Data::I(x) = &a.data {
        let f: fn(i64) -> i64 = match op {
            "Neg" => |v: i64| v.wrapping_neg(),
            "Abs" => |v: i64| v.wrapping_abs(),
            "Relu" => |v: i64| v.max(0),
            _ => return Err(format!("{op} needs a float operand, got {}", a.dtype)),
        };
        return Ok(vec![TensorValue::with_dtype(
            a.dtype,
            a.shape.clone(),
            Data::I(x.iter().map(|&v| f(v)).collect()),
        )]);
    }
    let x = c.f32_in(0)?;
    let tanh_gelu = c.node.string("approximate") == Some("tanh");
    let f: Box<dyn Fn(f32) -> f32> = match op {
        "Neg" => Box::new(|v: f32| -v),
        "Abs" => Box::new(f32::abs),
        "Sqrt" => Box::new(f32::sqrt),
        "Exp" => Box::new(math::exp_f32),
        "Log" => Box::new(f32::ln),
        "Sin" => Box::new(math::sin_f32),
        "Cos" => Box::new(math::cos_f32),
        "Tanh" => Box::new(math::tanh_f32),
        "Sigmoid" => Box::new(math::sigmoid_f32),
        "Erf" => Box::new(|v: f32| erf(v as f64) as f32),
        "Relu" => Box::new(|v: f32| v.max(0.0)),
        "Reciprocal" => Box::new(|v: f32| 1.0 / v),
        "Floor" => Box::new(f32::floor),
        "Ceil" => Box::new(f32::ceil),
        "Softplus" => Box::new(|v: f32| (v as f64).exp().ln_1p() as f32),
        "Gelu" | "lpc.gelu" if tanh_gelu => Box::new(|v: f32| {
            let v = v as f64;
            (0.5 * v
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh()))
                as f32
        }),
        "Gelu" | "lpc.gelu" => Box::new(|v: f32| {
            let v = v as f64;
            (0.5 * v * (1.0 + erf(v / std::f64::consts::SQRT_2))) as f32
        }),
        _ => return Err(format!("unknown unary op {op}")),
    };
    let d = a.dtype;
    Ok(vec![TensorValue::with_dtype(
        d,
        a.shape.clone(),
        Data::F(x.iter().map(|&v| round_to(d, f(v))).collect()),
    )])
}

pub fn identity(c: &OpCtx) -> R<Vec<TensorValue>> {
    Ok(vec![c.input(0)?.clone()])
}

pub fn cast(c: &OpCtx) -> R<Vec<TensorValue>> {
    let a = c.input(0)?;
    let code = c.node.int("to").ok_or("Cast needs `to`")?;
    let to = DType::from_onnx_code(code as i32)
        .ok_or_else(|| format!("Cast to type code {code} is not supported"))?;
    let v = a.to_f64();
    let data = if to == DType::Bool {
        Data::B(v.iter().map(|&x| x != 0.0).collect())
    } else if is_float(to) {
        Data::F(v.iter().map(|&x| round_to(to, x as f32)).collect())
    } else {
        // Float -> int truncates toward zero; ints wrap to the target width.
        let wrap = |x: i64| -> i64 {
            match to {
                DType::I32 => x as i32 as i64,
                DType::I8 => x as i8 as i64,
                DType::U8 => x as u8 as i64,
                _ => x,
            }
        };
        match &a.data {
            Data::I(x) => Data::I(x.iter().map(|&x| wrap(x)).collect()),
            _ => Data::I(v.iter().map(|&x| wrap(x as i64)).collect()),
        }
    };
    Ok(vec![TensorValue::with_dtype(to, a.shape.clone(), data)])
}
