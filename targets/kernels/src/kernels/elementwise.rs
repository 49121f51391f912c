//! Elementwise ops with numpy broadcasting: one work item per output
//! element. The output index is split into coordinates by the output dims
//! (`d0..`), and each operand is read at `Σ coord·stride` with its own
//! strides (`s<j>_<axis>`, 0 on broadcast axes), so one kernel serves every
//! shape of a given rank.
//!
//! Floats compute in f32 (f16/bf16 operands widened, the result rounded back,
//! as the interpreter does), transcendental functions through `mathlib` in
//! f64; integers in i64; bool is one byte, 0 or 1.

use crate::kernel::{Kernel, Param};
use crate::mlir::{Ty, B};

/// Element types of the IR as stored in device buffers.
pub fn storage(d: lpc_ir::DType) -> Option<Ty> {
    use lpc_ir::DType as D;
    Some(match d {
        D::F32 => Ty::F32,
        D::F16 => Ty::F16,
        D::Bf16 => Ty::BF16,
        D::F64 => Ty::F64,
        D::I64 => Ty::I64,
        D::I32 => Ty::I32,
        D::I8 | D::U8 | D::Bool => Ty::I8,
        _ => return None,
    })
}

/// How a stored value is computed with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Float,
    Int,
    Bool,
}

fn kind(d: lpc_ir::DType) -> Kind {
    use lpc_ir::DType as D;
    match d {
        D::F32 | D::F16 | D::Bf16 | D::F64 => Kind::Float,
        D::Bool => Kind::Bool,
        _ => Kind::Int,
    }
}

/// Loads element `i` of `buf` (IR type `d`) widened to its compute type
/// (f32, i64 or i1).
fn load(b: &mut B, buf: &str, i: &str, d: lpc_ir::DType) -> Result<String, String> {
    let t = storage(d).ok_or_else(|| format!("{d:?} has no GPU storage"))?;
    let v = b.load(buf, i, t);
    Ok(match (kind(d), t) {
        (Kind::Float, Ty::F32) => v,
        (Kind::Float, _) => b.convf(&v, t, Ty::F32),
        (Kind::Bool, _) => {
            let z = b.int(0, Ty::I8);
            b.cmpi("ne", &v, &z, Ty::I8)
        }
        (Kind::Int, Ty::I64) => v,
        (Kind::Int, Ty::I8) if d == lpc_ir::DType::U8 => b.cast("extui", &v, t, Ty::I64),
        (Kind::Int, _) => b.cast("extsi", &v, t, Ty::I64),
    })
}

/// Stores a compute-typed value as IR type `d`.
fn store(b: &mut B, v: &str, buf: &str, i: &str, d: lpc_ir::DType) -> Result<(), String> {
    let t = storage(d).ok_or_else(|| format!("{d:?} has no GPU storage"))?;
    let s = match (kind(d), t) {
        (Kind::Float, Ty::F32) | (Kind::Int, Ty::I64) => v.to_string(),
        (Kind::Float, _) => b.convf(v, Ty::F32, t),
        (Kind::Bool, _) => b.cast("extui", v, Ty::I1, Ty::I8),
        (Kind::Int, _) => b.cast("trunci", v, Ty::I64, t),
    };
    b.store(&s, buf, i, t);
    Ok(())
}

/// f32 -> f64 -> `@f` -> f32.
fn via_f64(b: &mut B, f: &str, x: &str) -> String {
    let w = b.cast("extf", x, Ty::F32, Ty::F64);
    let r = b.call(f, &[(&w, Ty::F64)], Some(Ty::F64)).expect("result");
    b.cast("truncf", &r, Ty::F64, Ty::F32)
}

/// `num / (1 + e^-x)` in f64 for an f32 `x`; `num` is x itself (silu) or 1
/// (sigmoid).
fn logistic(b: &mut B, x: &str, times_x: bool) -> String {
    let w = b.cast("extf", x, Ty::F32, Ty::F64);
    let n = b.op(format!("arith.negf {w} : f64"));
    let e = b
        .call("lpc_exp", &[(&n, Ty::F64)], Some(Ty::F64))
        .expect("r");
    let one = b.f64(1.0);
    let d = b.bin("addf", &one, &e, Ty::F64);
    let num = if times_x { w } else { one };
    let s = b.bin("divf", &num, &d, Ty::F64);
    b.cast("truncf", &s, Ty::F64, Ty::F32)
}

/// silu(x) = x · 1/(1 + e^-x), in f64.
fn silu(b: &mut B, x: &str) -> String {
    logistic(b, x, true)
}

fn gelu(b: &mut B, x: &str, tanh: bool) -> String {
    let w = b.cast("extf", x, Ty::F32, Ty::F64);
    let half = b.f64(0.5);
    let one = b.f64(1.0);
    let inner = if tanh {
        // sqrt(2/π)·(x + 0.044715 x³)
        let x2 = b.bin("mulf", &w, &w, Ty::F64);
        let x3 = b.bin("mulf", &x2, &w, Ty::F64);
        let c = b.f64(0.044715);
        let t = b.bin("mulf", &x3, &c, Ty::F64);
        let s = b.bin("addf", &w, &t, Ty::F64);
        let k = b.f64((2.0 / std::f64::consts::PI).sqrt());
        let a = b.bin("mulf", &s, &k, Ty::F64);
        b.call("lpc_tanh", &[(&a, Ty::F64)], Some(Ty::F64))
            .expect("r")
    } else {
        let k = b.f64(std::f64::consts::FRAC_1_SQRT_2);
        let a = b.bin("mulf", &w, &k, Ty::F64);
        b.call("lpc_erf", &[(&a, Ty::F64)], Some(Ty::F64))
            .expect("r")
    };
    let p = b.bin("addf", &one, &inner, Ty::F64);
    let h = b.bin("mulf", &w, &half, Ty::F64);
    let y = b.bin("mulf", &h, &p, Ty::F64);
    b.cast("truncf", &y, Ty::F64, Ty::F32)
}

/// `sqrt` of an f32 or f64 value without a libdevice call (`mathlib`).
pub fn sqrt(b: &mut B, x: &str, t: Ty) -> String {
    let f = if t == Ty::F64 {
        "lpc_sqrt"
    } else {
        "lpc_sqrtf"
    };
    b.call(f, &[(x, t)], Some(t)).expect("result")
}

fn round_int(b: &mut B, x: &str, up: bool) -> String {
    let f = if up { "lpc_ceilf" } else { "lpc_floorf" };
    b.call(f, &[(x, Ty::F32)], Some(Ty::F32)).expect("result")
}

/// The computation of one elementwise op on compute-typed operands.
fn compute(
    b: &mut B,
    op: &str,
    xs: &[String],
    ins: &[lpc_ir::DType],
    out: lpc_ir::DType,
    tanh_gelu: bool,
) -> Result<String, String> {
    let k0 = kind(ins[0]);
    let f = Ty::F32;
    let i = Ty::I64;
    let x = &xs[0];
    let y = xs.get(1).cloned().unwrap_or_default();
    let unsupported = || format!("`{op}` on {:?} has no GPU kernel", ins[0]);
    Ok(match (op, k0) {
        ("Add", Kind::Float) => b.bin("addf", x, &y, f),
        ("Sub", Kind::Float) => b.bin("subf", x, &y, f),
        ("Mul", Kind::Float) => b.bin("mulf", x, &y, f),
        ("Div", Kind::Float) => b.bin("divf", x, &y, f),
        ("Max", Kind::Float) => b.bin("maxnumf", x, &y, f),
        ("Min", Kind::Float) => b.bin("minnumf", x, &y, f),
        ("Add", Kind::Int) => b.bin("addi", x, &y, i),
        ("Sub", Kind::Int) => b.bin("subi", x, &y, i),
        ("Mul", Kind::Int) => b.bin("muli", x, &y, i),
        ("Div", Kind::Int) => b.bin("divsi", x, &y, i),
        ("Max", Kind::Int) => b.bin("maxsi", x, &y, i),
        ("Min", Kind::Int) => b.bin("minsi", x, &y, i),
        ("Equal", Kind::Float) => b.cmpf("oeq", x, &y, f),
        ("Less", Kind::Float) => b.cmpf("olt", x, &y, f),
        ("LessOrEqual", Kind::Float) => b.cmpf("ole", x, &y, f),
        ("Greater", Kind::Float) => b.cmpf("ogt", x, &y, f),
        ("GreaterOrEqual", Kind::Float) => b.cmpf("oge", x, &y, f),
        ("Equal", Kind::Int) => b.cmpi("eq", x, &y, i),
        ("Less", Kind::Int) => b.cmpi("slt", x, &y, i),
        ("LessOrEqual", Kind::Int) => b.cmpi("sle", x, &y, i),
        ("Greater", Kind::Int) => b.cmpi("sgt", x, &y, i),
        ("GreaterOrEqual", Kind::Int) => b.cmpi("sge", x, &y, i),
        ("Equal", Kind::Bool) => b.cmpi("eq", x, &y, Ty::I1),
        ("And", Kind::Bool) => b.bin("andi", x, &y, Ty::I1),
        ("Or", Kind::Bool) => b.bin("ori", x, &y, Ty::I1),
        ("Xor", Kind::Bool) => b.bin("xori", x, &y, Ty::I1),
        ("Not", Kind::Bool) => {
            let t = b.op("arith.constant true");
            b.bin("xori", x, &t, Ty::I1)
        }
        ("Where", _) => {
            let t = match kind(ins[1]) {
                Kind::Float => f,
                Kind::Int => i,
                Kind::Bool => Ty::I1,
            };
            b.select(x, &y, &xs[2], t)
        }
        ("Identity", _) => x.clone(),
        ("Cast", _) => cast(b, x, k0, kind(out))?,
        ("Neg", Kind::Float) => b.op(format!("arith.negf {x} : f32")),
        ("Neg", Kind::Int) => {
            let z = b.int(0, i);
            b.bin("subi", &z, x, i)
        }
        ("Abs", Kind::Float) => b.absf(x, f),
        ("Abs", Kind::Int) => {
            let z = b.int(0, i);
            let n = b.bin("subi", &z, x, i);
            b.bin("maxsi", x, &n, i)
        }
        ("Sqrt", Kind::Float) => sqrt(b, x, f),
        ("Exp", Kind::Float) => via_f64(b, "lpc_exp", x),
        ("Sin", Kind::Float) => via_f64(b, "lpc_sin", x),
        ("Cos", Kind::Float) => via_f64(b, "lpc_cos", x),
        ("Tanh", Kind::Float) => via_f64(b, "lpc_tanh", x),
        ("Erf", Kind::Float) => via_f64(b, "lpc_erf", x),
        ("Sigmoid", Kind::Float) => logistic(b, x, false),
        ("Relu", Kind::Float) => {
            let z = b.f32(0.0);
            b.bin("maxnumf", x, &z, f)
        }
        ("Reciprocal", Kind::Float) => {
            let one = b.f32(1.0);
            b.bin("divf", &one, x, f)
        }
        ("Floor", Kind::Float) => round_int(b, x, false),
        ("Ceil", Kind::Float) => round_int(b, x, true),
        ("lpc.silu", Kind::Float) => silu(b, x),
        ("lpc.swiglu", Kind::Float) => {
            let s = silu(b, x);
            let s = round_to(b, &s, out);
            b.bin("mulf", &s, &y, f)
        }
        ("Gelu" | "lpc.gelu", Kind::Float) => gelu(b, x, tanh_gelu),
        _ => return Err(unsupported()),
    })
}

/// A unary float op (`lpc.silu`, `lpc.gelu`, ...) on an f32 value.
pub fn apply_unary(b: &mut B, op: &str, x: &str, tanh_gelu: bool) -> Result<String, String> {
    compute(
        b,
        op,
        &[x.to_string()],
        &[lpc_ir::DType::F32],
        lpc_ir::DType::F32,
        tanh_gelu,
    )
}

/// Rounds an f32 intermediate to the precision of `d` (f16/bf16), as the
/// interpreter does between fused steps.
fn round_to(b: &mut B, x: &str, d: lpc_ir::DType) -> String {
    match storage(d) {
        Some(t @ (Ty::F16 | Ty::BF16)) => {
            let n = b.convf(x, Ty::F32, t);
            b.convf(&n, t, Ty::F32)
        }
        _ => x.to_string(),
    }
}

fn cast(b: &mut B, x: &str, from: Kind, to: Kind) -> Result<String, String> {
    Ok(match (from, to) {
        (Kind::Float, Kind::Float) | (Kind::Int, Kind::Int) | (Kind::Bool, Kind::Bool) => {
            x.to_string()
        }
        (Kind::Int, Kind::Float) => b.cast("sitofp", x, Ty::I64, Ty::F32),
        (Kind::Bool, Kind::Float) => b.cast("uitofp", x, Ty::I1, Ty::F32),
        (Kind::Float, Kind::Int) => b.cast("fptosi", x, Ty::F32, Ty::I64),
        (Kind::Bool, Kind::Int) => b.cast("extui", x, Ty::I1, Ty::I64),
        (Kind::Float, Kind::Bool) => {
            let z = b.f32(0.0);
            b.cmpf("une", x, &z, Ty::F32)
        }
        (Kind::Int, Kind::Bool) => {
            let z = b.int(0, Ty::I64);
            b.cmpi("ne", x, &z, Ty::I64)
        }
    })
}

/// The ops this kernel family implements.
pub const OPS: &[&str] = &[
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Max",
    "Min",
    "Equal",
    "Less",
    "LessOrEqual",
    "Greater",
    "GreaterOrEqual",
    "And",
    "Or",
    "Xor",
    "Not",
    "Where",
    "Identity",
    "Cast",
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
    "lpc.swiglu",
];

/// What an elementwise kernel is specialized on.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Spec {
    pub op: String,
    /// Rank of the output (operands are broadcast to it).
    pub rank: usize,
    pub ins: Vec<lpc_ir::DType>,
    pub out: lpc_ir::DType,
    /// `Gelu` with `approximate = "tanh"`.
    pub tanh_gelu: bool,
}

/// The kernel: params `y`, `x0..`, `d0..d{rank-1}`, `s<j>_<axis>`.
pub fn kernel(name: &str, s: &Spec) -> Result<Kernel, String> {
    let mut params = vec![(
        "y".to_string(),
        Param::Buf(storage(s.out).ok_or("output type has no GPU storage")?),
    )];
    for (j, d) in s.ins.iter().enumerate() {
        let t = storage(*d).ok_or_else(|| format!("operand {j}: {d:?} has no GPU storage"))?;
        params.push((format!("x{j}"), Param::Buf(t)));
    }
    for a in 0..s.rank {
        params.push((format!("d{a}"), Param::Index));
    }
    for j in 0..s.ins.len() {
        for a in 0..s.rank {
            params.push((format!("s{j}_{a}"), Param::Index));
        }
    }
    let mut b = B::new();
    // Coordinates from the innermost axis out.
    let mut rem = "%i".to_string();
    let mut coord = vec![String::new(); s.rank];
    for a in (0..s.rank).rev() {
        if a == 0 {
            coord[a] = rem.clone();
        } else {
            coord[a] = b.bin("remui", &rem, &format!("%d{a}"), Ty::Index);
            rem = b.bin("divui", &rem, &format!("%d{a}"), Ty::Index);
        }
    }
    let mut xs = Vec::new();
    for (j, d) in s.ins.iter().enumerate() {
        let mut off = b.index(0);
        for (a, c) in coord.iter().enumerate() {
            let m = b.bin("muli", c, &format!("%s{j}_{a}"), Ty::Index);
            off = b.bin("addi", &off, &m, Ty::Index);
        }
        xs.push(load(&mut b, &format!("%x{j}"), &off, *d)?);
    }
    let y = compute(&mut b, &s.op, &xs, &s.ins, s.out, s.tanh_gelu)?;
    store(&mut b, &y, "%y", "%i", s.out)?;
    Ok(Kernel {
        name: name.to_string(),
        params,
        body: b.finish(),
    })
}
