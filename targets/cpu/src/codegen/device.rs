//! `--target cuda`: the host schedule of a GPU library.
//!
//! The graph function is generated as for the CPU, except that each op with
//! a GPU kernel (`lpc-kernels`) becomes launches: the dims and strides the
//! CPU path computes are passed as kernel arguments, buffers as memref
//! descriptors, through `lpc_rt_launch` (the runtime runs them on the CUDA
//! device or on its CPU emulation). Ops without a kernel, and variants a
//! kernel does not cover, keep their CPU loops on the same (managed)
//! buffers, after `lpc_rt_host` has waited for the launches in flight.
//!
//! The kernels collected here are lowered by the MLIR back end (through
//! [`DeviceOptions::lower`], so this crate never links MLIR) to PTX and to
//! LLVM IR for the CPU; [`finish`] links the latter into the library, with a
//! packed entry point per kernel, and emits the GPU loader.

use super::arg;
use super::core::{Cg, Val, R};
use inkwell::memory_buffer::MemoryBuffer;
use inkwell::module::Linkage;
use inkwell::types::BasicTypeEnum;
use inkwell::values::{BasicValueEnum, FloatValue, IntValue, PointerValue};
use inkwell::IntPredicate;
use lpc_ir::{DType, Node};
use lpc_kernels::kernel::{Kernel, Param};
use lpc_kernels::kernels::{elementwise as ew, nn as knn, qgemm as kq};
use lpc_runtime::Format;
use std::collections::HashMap;

/// What the MLIR back end produces for the collected kernels.
#[derive(Clone, Debug)]
pub struct DeviceCode {
    /// The device module's MLIR (filled by [`finish`]).
    pub mlir: String,
    /// The device module as PTX text.
    pub ptx: String,
    /// The host module (the same kernels for the CPU) as LLVM IR text.
    pub host_ir: String,
}

/// Lowers kernels for a GPU architecture (`sm_90`, ...).
pub type LowerFn = fn(&[Kernel], &str) -> Result<DeviceCode, String>;

/// Code generation for a GPU (see the module documentation).
#[derive(Clone, Debug)]
pub struct DeviceOptions {
    pub arch: String,
    pub lower: LowerFn,
}

/// The kernels of one library, deduplicated by their text.
#[derive(Debug, Default)]
pub struct DevState {
    pub kernels: Vec<Kernel>,
    index: HashMap<(Vec<(String, Param)>, String), usize>,
}

impl DevState {
    /// The index of `k` (renamed `lpc_k<index>`), added on first use.
    fn register(&mut self, mut k: Kernel) -> usize {
        let key = (k.params.clone(), k.body.clone());
        if let Some(&i) = self.index.get(&key) {
            return i;
        }
        let i = self.kernels.len();
        k.name = format!("lpc_k{i}");
        self.kernels.push(k);
        self.index.insert(key, i);
        i
    }
}

/// A launch argument.
#[derive(Clone, Copy, Debug)]
pub enum LArg<'c> {
    /// A buffer and its length in elements.
    Buf(PointerValue<'c>, IntValue<'c>),
    Idx(IntValue<'c>),
    F32(FloatValue<'c>),
}

fn kerr<T>(cg: &Cg, e: String) -> R<T> {
    cg.err(format!("GPU kernel: {e}"))
}

/// Emits a launch of `k` over `count` work items.
fn launch<'c>(cg: &mut Cg<'c>, k: Kernel, count: IntValue<'c>, args: &[LArg<'c>]) -> R<()> {
    if k.params.len() != args.len() {
        return kerr(cg, format!("{} takes {} arguments", k.name, k.params.len()));
    }
    let id = cg.dev.as_mut().expect("device code generation").register(k);
    // One 8-byte slot per LLVM-level parameter, argv pointing at each.
    let mut vals: Vec<BasicValueEnum<'c>> = vec![count.into()];
    for a in args {
        match *a {
            LArg::Buf(p, n) => {
                let words: [BasicValueEnum<'c>; 5] = [
                    p.into(),
                    p.into(),
                    cg.c64(0).into(),
                    n.into(),
                    cg.c64(1).into(),
                ];
                vals.extend(words)
            }
            LArg::Idx(v) => vals.push(v.into()),
            LArg::F32(v) => vals.push(v.into()),
        }
    }
    let slots = cg.entry_alloca(cg.i64t().into(), vals.len() as u32)?;
    let argv = cg.entry_alloca(cg.ptrt().into(), vals.len() as u32)?;
    for (j, v) in vals.iter().enumerate() {
        let i = cg.c64(j as i64);
        // SAFETY: both arrays have `vals.len()` elements.
        let (slot, ap) = unsafe {
            (
                cg.b.build_in_bounds_gep(cg.i64t(), slots, &[i], "")?,
                cg.b.build_in_bounds_gep(cg.ptrt(), argv, &[i], "")?,
            )
        };
        cg.b.build_store(slot, *v)?;
        cg.b.build_store(ap, slot)?;
    }
    let f = cg.rt("lpc_rt_launch");
    let rc = cg
        .call_value(
            f,
            &[
                cg.ctx.into(),
                cg.i32t().const_int(id as u64, false).into(),
                count.into(),
                argv.into(),
            ],
        )?
        .into_int_value();
    let ok = cg.icmp(IntPredicate::EQ, rc, cg.i32t().const_zero())?;
    cg.check(ok, "kernel launch failed")
}

/// Waits for the launches in flight before host code touches buffers.
pub fn host_op(cg: &mut Cg) -> R<()> {
    let f = cg.rt("lpc_rt_host");
    let rc = cg.call_value(f, &[cg.ctx.into()])?.into_int_value();
    let ok = cg.icmp(IntPredicate::EQ, rc, cg.i32t().const_zero())?;
    cg.check(ok, "a GPU kernel failed")
}

fn float_dt(d: DType) -> bool {
    matches!(d, DType::F32 | DType::F16 | DType::Bf16)
}

/// Generates `n` with kernels when it has them (`None`: host code).
pub fn emit<'c>(cg: &mut Cg<'c>, n: &Node, ins: &[Option<Val<'c>>]) -> R<Option<Vec<Val<'c>>>> {
    let op = n.op.as_str();
    if ew::OPS.contains(&op) {
        return elementwise(cg, n, ins);
    }
    match op {
        "lpc.rms_norm" | "lpc.layer_norm" => norm(cg, n, ins),
        "lpc.qgemm" => qgemm(cg, n, ins),
        _ => Ok(None),
    }
}

fn elementwise<'c>(cg: &mut Cg<'c>, n: &Node, ins: &[Option<Val<'c>>]) -> R<Option<Vec<Val<'c>>>> {
    let op = n.op.as_str();
    let arity = match op {
        "Where" => 3,
        "Add" | "Sub" | "Mul" | "Div" | "Max" | "Min" | "Equal" | "Less" | "LessOrEqual"
        | "Greater" | "GreaterOrEqual" | "And" | "Or" | "Xor" | "lpc.swiglu" => 2,
        _ => 1,
    };
    if ins.len() != arity || ins.iter().any(Option::is_none) {
        return Ok(None);
    }
    let xs: Vec<Val<'c>> = ins.iter().flatten().cloned().collect();
    let out = match op {
        "Equal" | "Less" | "LessOrEqual" | "Greater" | "GreaterOrEqual" | "And" | "Or" | "Xor"
        | "Not" => DType::Bool,
        "Where" => xs[1].dt,
        "Cast" => match DType::from_onnx_code(n.int("to").unwrap_or(1) as i32) {
            Some(d) => d,
            None => return Ok(None),
        },
        _ => xs[0].dt,
    };
    if op == "Identity" || (op == "Cast" && out == xs[0].dt) {
        return Ok(Some(vec![xs[0].clone()]));
    }
    // Float ops whose operands the kernel does not widen stay on the host.
    let needs_float = !matches!(
        op,
        "Add"
            | "Sub"
            | "Mul"
            | "Div"
            | "Max"
            | "Min"
            | "Equal"
            | "Less"
            | "LessOrEqual"
            | "Greater"
            | "GreaterOrEqual"
            | "And"
            | "Or"
            | "Xor"
            | "Not"
            | "Where"
            | "Cast"
            | "Neg"
            | "Abs"
    );
    if needs_float && !float_dt(xs[0].dt) {
        return Ok(None);
    }
    let spec = ew::Spec {
        op: op.into(),
        rank: 0,
        ins: xs.iter().map(|v| v.dt).collect(),
        out,
        tanh_gelu: n.string("approximate") == Some("tanh"),
    };
    let refs: Vec<&Val<'c>> = xs.iter().collect();
    let (dims, strides) = cg.broadcast(&refs)?;
    let spec = ew::Spec {
        rank: dims.len(),
        ..spec
    };
    let k = match ew::kernel("lpc_ew", &spec) {
        Ok(k) => k,
        Err(_) => return Ok(None),
    };
    let count = cg.product(&dims)?;
    let y = cg.alloc(out, count)?;
    let mut args = vec![LArg::Buf(y, count)];
    for v in &xs {
        let len = cg.product(&v.dims)?;
        args.push(LArg::Buf(v.ptr, len));
    }
    args.extend(dims.iter().map(|&d| LArg::Idx(d)));
    for s in &strides {
        args.extend(s.iter().map(|&d| LArg::Idx(d)));
    }
    launch(cg, k, count, &args)?;
    Ok(Some(vec![Val {
        ptr: y,
        dims,
        dt: out,
    }]))
}

fn norm<'c>(cg: &mut Cg<'c>, n: &Node, ins: &[Option<Val<'c>>]) -> R<Option<Vec<Val<'c>>>> {
    let center = n.op == "lpc.layer_norm";
    let x = arg(cg, ins, 0)?.clone();
    let scale = arg(cg, ins, 1)?.clone();
    let bias = if center {
        ins.get(2).cloned().flatten()
    } else {
        None
    };
    let rank = x.rank() as i64;
    let mut axis = n.int("axis").unwrap_or(-1);
    if axis < 0 {
        axis += rank;
    }
    if !(0..rank).contains(&axis)
        || !float_dt(x.dt)
        || !float_dt(scale.dt)
        || scale.rank() != 1
        || bias
            .as_ref()
            .is_some_and(|b| b.rank() != 1 || b.dt != scale.dt)
    {
        return Ok(None);
    }
    let axis = axis as usize;
    let rows = cg.product(&x.dims[..axis])?;
    let len = cg.product(&x.dims[axis..])?;
    // The scale (and bias) broadcast along the last axis or is one value.
    let last = *x.dims.last().expect("rank >= 1");
    let sn = scale.dims[0];
    let fits = cg.icmp(IntPredicate::EQ, sn, last)?;
    let one = cg.icmp(IntPredicate::EQ, sn, cg.c64(1))?;
    let ok = cg.b.build_or(fits, one, "")?;
    cg.check(ok, "scale does not match the normalized shape")?;
    if let Some(b) = &bias {
        let same = cg.icmp(IntPredicate::EQ, b.dims[0], sn)?;
        cg.check(same, "bias does not match the scale")?;
    }
    let spec = knn::NormSpec {
        center,
        bias: bias.is_some(),
        x: x.dt,
        scale: scale.dt,
        epsilon_bits: n.float("epsilon").unwrap_or(1e-5).to_bits(),
    };
    let k = match knn::norm("lpc_norm", &spec) {
        Ok(k) => k,
        Err(e) => return kerr(cg, e),
    };
    let total = cg.product(&x.dims)?;
    let y = cg.alloc(x.dt, total)?;
    let mean = cg.alloc(DType::F32, rows)?;
    let inv = cg.alloc(DType::F32, rows)?;
    let mut args = vec![
        LArg::Buf(y, total),
        LArg::Buf(mean, rows),
        LArg::Buf(inv, rows),
        LArg::Buf(x.ptr, total),
        LArg::Buf(scale.ptr, sn),
    ];
    if let Some(b) = &bias {
        args.push(LArg::Buf(b.ptr, sn));
    }
    args.extend([LArg::Idx(len), LArg::Idx(sn)]);
    launch(cg, k, rows, &args)?;
    let stat: Vec<IntValue<'c>> = x
        .dims
        .iter()
        .enumerate()
        .map(|(i, &d)| if i < axis { d } else { cg.c64(1) })
        .collect();
    let yv = Val {
        ptr: y,
        dims: x.dims.clone(),
        dt: x.dt,
    };
    let sv = |p| Val {
        ptr: p,
        dims: stat.clone(),
        dt: DType::F32,
    };
    Ok(Some(if center {
        vec![yv, sv(mean), sv(inv)]
    } else {
        cg.release(mean)?;
        vec![yv, sv(inv)]
    }))
}

fn qgemm<'c>(cg: &mut Cg<'c>, n: &Node, ins: &[Option<Val<'c>>]) -> R<Option<Vec<Val<'c>>>> {
    let fmt = |k: &str, m: &str| -> Option<Option<Format>> {
        match n.string(k)? {
            "none" => Some(None),
            f => Format::parse(
                f,
                n.string(m).filter(|_| f != "hif4"),
                n.string(m).filter(|_| f == "hif4"),
            )
            .ok()
            .map(Some),
        }
    };
    let (Some(Some(wf)), Some(af)) = (fmt("wformat", "wmode"), fmt("aformat", "amode")) else {
        return Ok(None);
    };
    // Variants without kernels yet stay on the host: scaled HiF8 and
    // activations in HiF4/HiF8.
    let a_mxfp4 = match af {
        None => false,
        Some(Format::Mxfp4(_)) if matches!(wf, Format::Mxfp4(_)) => true,
        Some(_) => return Ok(None),
    };
    if n.int("wscale").unwrap_or(0) != 0 || n.string("ascale") == Some("pow2") {
        return Ok(None);
    }
    let x = arg(cg, ins, 0)?.clone();
    if x.dt != DType::F32 || x.rank() == 0 {
        return Ok(None);
    }
    let Some(k) = n.int("k").map(|k| k as usize) else {
        return Ok(None);
    };
    let parts = n.int("parts").unwrap_or(1).max(1) as usize;
    let rot = n.int("rotate").unwrap_or(0) as usize;
    let kc = cg.c64(k as i64);
    let last = *x.dims.last().expect("rank >= 1");
    let ok = cg.icmp(IntPredicate::EQ, last, kc)?;
    cg.check(ok, &format!("x does not have {k} features"))?;
    if rot > 0 && (k % rot != 0 || !rot.is_power_of_two()) {
        return Ok(None);
    }
    let ws: Vec<Val<'c>> = (0..parts)
        .map(|p| arg(cg, ins, 1 + p).cloned())
        .collect::<R<_>>()?;
    let after = 1 + parts;
    let has_bias = n
        .int("bias")
        .map_or(ins.get(after).is_some_and(Option::is_some), |b| b != 0);
    let has_res = n.int("residual").unwrap_or(0) != 0;
    let bias = if has_bias {
        Some(arg(cg, ins, after)?.clone())
    } else {
        None
    };
    let res = if has_res {
        Some(arg(cg, ins, after + has_bias as usize)?.clone())
    } else {
        None
    };
    if bias.as_ref().is_some_and(|b| b.dt != DType::F32)
        || res.as_ref().is_some_and(|r| r.dt != DType::F32)
    {
        return Ok(None);
    }
    let spec = kq::DotSpec {
        wformat: wf,
        a_mxfp4,
        parts,
        bias: has_bias,
        residual: has_res,
        activation: n.string("activation").map(str::to_string),
    };
    let dot = match kq::dot("lpc_dot", &spec) {
        Ok(k) => k,
        Err(_) => return Ok(None),
    };
    let rows = cg.product(&x.dims[..x.rank() - 1])?;
    let nb = k.div_ceil(wf.block_len());
    let nbc = cg.c64(nb as i64);
    let mut ntot = cg.c64(0);
    let mut wlens = Vec::new();
    for w in &ws {
        ntot = cg.add(ntot, w.dims[0])?;
        wlens.push(cg.product(&w.dims)?);
    }
    if let Some(b) = &bias {
        let blen = cg.product(&b.dims)?;
        let ok = cg.icmp(IntPredicate::EQ, blen, ntot)?;
        cg.check(ok, "bias length differs from the output features")?;
    }
    let xlen = cg.mul(rows, kc)?;
    // Rotation into a scratch row buffer.
    let mut a = x.ptr;
    let mut scratch = Vec::new();
    if let Some(per_row) = k.checked_div(rot) {
        let r = cg.alloc(DType::F32, xlen)?;
        let blocks = cg.mul(rows, cg.c64(per_row as i64))?;
        let args = [
            LArg::Buf(r, xlen),
            LArg::Buf(x.ptr, xlen),
            LArg::Idx(kc),
            LArg::Idx(cg.c64(rot as i64)),
            LArg::F32(cg.cf32(1.0 / (rot as f32).sqrt())),
        ];
        launch(cg, kq::rotate("lpc_rotate"), blocks, &args)?;
        a = r;
        scratch.push(r);
    }
    let outn = cg.mul(rows, ntot)?;
    let mut shape = x.dims.clone();
    *shape.last_mut().expect("rank >= 1") = ntot;
    if let Some(r) = &res {
        let rlen = cg.product(&r.dims)?;
        let ok = cg.icmp(IntPredicate::EQ, rlen, outn)?;
        cg.check(ok, "residual does not match the output")?;
    }
    let y = cg.alloc(DType::F32, outn)?;
    let mut args = vec![LArg::Buf(y, outn)];
    if a_mxfp4 {
        let nblk = cg.mul(rows, nbc)?;
        let ncodes = cg.mul(nblk, cg.c64(32))?;
        let codes = cg.alloc(DType::I8, ncodes)?;
        let exps = cg.alloc(DType::I32, nblk)?;
        let ties = matches!(af, Some(Format::Mxfp4(m)) if m.name() == "ties-away");
        let qargs = [
            LArg::Buf(codes, ncodes),
            LArg::Buf(exps, nblk),
            LArg::Buf(a, xlen),
            LArg::Idx(kc),
            LArg::Idx(nbc),
        ];
        launch(cg, kq::quant_mxfp4("lpc_quant", ties), nblk, &qargs)?;
        args.extend([LArg::Buf(codes, ncodes), LArg::Buf(exps, nblk)]);
        scratch.extend([codes, exps]);
    } else {
        args.push(LArg::Buf(a, xlen));
    }
    for (w, &len) in ws.iter().zip(&wlens) {
        args.push(LArg::Buf(w.ptr, len));
    }
    if matches!(wf, Format::Hif8(_)) {
        let lut = hif8_table(cg)?;
        args.push(LArg::Buf(lut, cg.c64(256)));
    }
    if let Some(b) = &bias {
        args.push(LArg::Buf(b.ptr, ntot));
    }
    if let Some(r) = &res {
        args.push(LArg::Buf(r.ptr, outn));
    }
    args.extend([LArg::Idx(kc), LArg::Idx(nbc), LArg::Idx(ntot)]);
    args.extend(ws.iter().map(|w| LArg::Idx(w.dims[0])));
    launch(cg, dot, outn, &args)?;
    for p in scratch {
        cg.release(p)?;
    }
    Ok(Some(vec![Val {
        ptr: y,
        dims: shape,
        dt: DType::F32,
    }]))
}

/// HiF8's decode table in a run buffer (device-visible), filled on the host.
fn hif8_table<'c>(cg: &mut Cg<'c>) -> R<PointerValue<'c>> {
    let name = "lpc.hif8_table";
    let g = match cg.m.get_global(name) {
        Some(g) => g,
        None => {
            let vals: Vec<_> = lpc_runtime::formats::hif8::DECODE_F32_BITS
                .iter()
                .map(|&b| cg.i32t().const_int(b as u64, false))
                .collect();
            let arr = cg.i32t().const_array(&vals);
            let g = cg.m.add_global(arr.get_type(), None, name);
            g.set_initializer(&arr);
            g.set_constant(true);
            g.set_linkage(Linkage::Private);
            g
        }
    };
    // Constants of the library are host memory: copy into a run buffer
    // (a host write: wait for kernels that may use a recycled buffer).
    host_op(cg)?;
    let buf = cg.alloc(DType::F32, cg.c64(256))?;
    cg.b.build_memcpy(buf, 4, g.as_pointer_value(), 4, cg.c64(1024))?;
    Ok(buf)
}

/// The LLVM types of kernel `k`'s host entry point, in order.
fn host_params<'c>(cg: &Cg<'c>, k: &Kernel) -> Vec<BasicTypeEnum<'c>> {
    let mut t: Vec<BasicTypeEnum<'c>> = vec![cg.i64t().into()];
    for (_, p) in &k.params {
        match p {
            Param::Buf(_) => {
                let words: [BasicTypeEnum<'c>; 5] = [
                    cg.ptrt().into(),
                    cg.ptrt().into(),
                    cg.i64t().into(),
                    cg.i64t().into(),
                    cg.i64t().into(),
                ];
                t.extend(words)
            }
            Param::Index => t.push(cg.i64t().into()),
            Param::F32 => t.push(cg.f32t().into()),
        }
    }
    t
}

/// Links the kernels' CPU build, adds their packed entry points and the
/// tables the runtime reads, and emits `lpc_model_load` for a GPU library.
/// Returns the device code (for `--emit ptx`).
pub fn finish<'c>(
    cg: &mut Cg<'c>,
    o: &DeviceOptions,
    load_args: &[BasicValueEnum<'c>],
) -> R<DeviceCode> {
    let kernels = std::mem::take(&mut cg.dev.as_mut().expect("device").kernels);
    let mut code = (o.lower)(&kernels, &o.arch)
        .map_err(|e| super::CgError::Graph(format!("GPU back end: {e}")))?;
    code.mlir = lpc_kernels::kernel::gpu_module(&kernels);
    if !kernels.is_empty() {
        let buf = MemoryBuffer::create_from_memory_range_copy(code.host_ir.as_bytes(), "kernels");
        let hm = cg
            .cx
            .create_module_from_ir(buf)
            .map_err(|e| super::CgError::Graph(format!("kernels' LLVM IR: {e}")))?;
        cg.m.link_in_module(hm)
            .map_err(|e| super::CgError::Graph(format!("linking the kernels: {e}")))?;
    }
    let p = cg.ptrt();
    let void = cg.cx.void_type();
    let mut packed = Vec::new();
    let mut names = Vec::new();
    for k in &kernels {
        let f = cg
            .m
            .get_function(&k.name)
            .ok_or_else(|| super::CgError::Graph(format!("kernel {} was not lowered", k.name)))?;
        f.set_linkage(Linkage::Internal);
        let w = cg.m.add_function(
            &format!("{}.packed", k.name),
            void.fn_type(&[p.into()], false),
            Some(Linkage::Internal),
        );
        let bb = cg.cx.append_basic_block(w, "entry");
        cg.b.position_at_end(bb);
        let argv = w.get_nth_param(0).expect("argv").into_pointer_value();
        let mut args = Vec::new();
        for (j, t) in host_params(cg, k).into_iter().enumerate() {
            // SAFETY: argv has one pointer per parameter (the launch ABI).
            let ap = unsafe { cg.b.build_in_bounds_gep(p, argv, &[cg.c64(j as i64)], "")? };
            let slot = cg.b.build_load(p, ap, "")?.into_pointer_value();
            args.push(cg.b.build_load(t, slot, "")?.into());
        }
        cg.b.build_call(f, &args, "")?;
        cg.b.build_return(None)?;
        packed.push(w.as_global_value().as_pointer_value());
        names.push(cg.cstr(&k.name));
    }
    let table = |cg: &mut Cg<'c>, name: &str, vals: &[PointerValue<'c>]| -> PointerValue<'c> {
        let arr = p.const_array(vals);
        let g = cg.m.add_global(arr.get_type(), None, name);
        g.set_initializer(&arr);
        g.set_constant(true);
        g.set_linkage(Linkage::Private);
        g.as_pointer_value()
    };
    let packed_t = table(cg, "lpc.kernels.emulated", &packed);
    let names_t = table(cg, "lpc.kernels.names", &names);
    let ptx = cg.cx.const_string(code.ptx.as_bytes(), true);
    let pg = cg.m.add_global(ptx.get_type(), None, "lpc.kernels.ptx");
    pg.set_initializer(&ptx);
    pg.set_constant(true);
    pg.set_linkage(Linkage::Private);

    let i64t = cg.i64t();
    let load = cg.m.add_function(
        "lpc_model_load",
        p.fn_type(&[p.into(), p.into()], false),
        Some(Linkage::External),
    );
    let tys: Vec<inkwell::types::BasicMetadataTypeEnum> = vec![
        p.into(),
        i64t.into(),
        p.into(),
        p.into(),
        p.into(),
        p.into(),
        p.into(),
        i64t.into(),
        p.into(),
        p.into(),
        i64t.into(),
    ];
    let rt_load = cg.m.add_function(
        "lpc_rt_load_gpu",
        p.fn_type(&tys, false),
        Some(Linkage::External),
    );
    let bb = cg.cx.append_basic_block(load, "entry");
    cg.b.position_at_end(bb);
    let mut args: Vec<inkwell::values::BasicMetadataValueEnum> =
        load_args.iter().map(|&v| v.into()).collect();
    let rest: [inkwell::values::BasicMetadataValueEnum; 7] = [
        load.get_nth_param(0).expect("path").into(),
        load.get_nth_param(1).expect("opts").into(),
        pg.as_pointer_value().into(),
        i64t.const_int(code.ptx.len() as u64, false).into(),
        names_t.into(),
        packed_t.into(),
        i64t.const_int(kernels.len() as u64, false).into(),
    ];
    args.extend(rest);
    let h = cg.call_value(rt_load, &args)?;
    cg.b.build_return(Some(&h))?;
    cg.dev.as_mut().expect("device").kernels = kernels;
    Ok(code)
}
