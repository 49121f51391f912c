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
use lpc_kernels::kernels::{elementwise as ew, linalg as kl, nn as knn, qgemm as kq, shape as ks};
use lpc_runtime::Format;
use std::collections::HashMap;

/// What the MLIR back end produces for the collected kernels.
#[derive(Clone, Debug)]
pub struct DeviceCode {
    /// The device module's MLIR (filled by [`finish`]).
    pub mlir: String,
    /// Where the ops went: "N kernels; on the device: ...; on the host: ..."
    /// (filled by [`finish`]).
    pub summary: String,
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
    /// Nodes by op type, generated as launches or as host code.
    pub on_device: std::collections::BTreeMap<String, usize>,
    pub on_host: std::collections::BTreeMap<String, usize>,
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
///
/// Kernels only ever produce float tensors: integer and bool tensors (shape
/// arithmetic, ids, masks) are computed on the host, so host code may read
/// them (position ids, gather indices) without waiting for the device.
pub fn emit<'c>(cg: &mut Cg<'c>, n: &Node, ins: &[Option<Val<'c>>]) -> R<Option<Vec<Val<'c>>>> {
    let op = n.op.as_str();
    if ew::OPS.contains(&op) {
        return elementwise(cg, n, ins);
    }
    match op {
        "lpc.rms_norm" | "lpc.layer_norm" => norm(cg, n, ins),
        "lpc.qgemm" => qgemm(cg, n, ins),
        "lpc.linear" => linear(cg, n, ins),
        "lpc.rope" => rope(cg, n, ins),
        "lpc.attention" => attention(cg, n, ins),
        "Transpose" => transpose(cg, n, ins),
        "Concat" => concat(cg, n, ins),
        "Gather" => gather(cg, n, ins),
        _ => Ok(None),
    }
}

/// One strided copy: `y[yoff + Σ c·ys] = x[xoff + Σ c·xs]` over the box `d`.
/// Buffer lengths fill the descriptors' size words, which kernels do not
/// read (the strided views of the CPU path pass the copied count).
#[allow(clippy::too_many_arguments)]
pub(super) fn copy<'c>(
    cg: &mut Cg<'c>,
    dt: DType,
    (y, ylen): (PointerValue<'c>, IntValue<'c>),
    (x, xlen): (PointerValue<'c>, IntValue<'c>),
    d: &[IntValue<'c>],
    xs: &[IntValue<'c>],
    ys: &[IntValue<'c>],
    (xoff, yoff): (IntValue<'c>, IntValue<'c>),
) -> R<()> {
    let k = match ks::copy("lpc_copy", d.len(), dt.size()) {
        Ok(k) => k,
        Err(e) => return kerr(cg, e),
    };
    let count = cg.product(d)?;
    let mut args = vec![LArg::Buf(y, ylen), LArg::Buf(x, xlen)];
    args.extend(d.iter().map(|&v| LArg::Idx(v)));
    args.extend(xs.iter().map(|&v| LArg::Idx(v)));
    args.extend(ys.iter().map(|&v| LArg::Idx(v)));
    args.extend([LArg::Idx(xoff), LArg::Idx(yoff)]);
    launch(cg, k, count, &args)
}

fn transpose<'c>(cg: &mut Cg<'c>, n: &Node, ins: &[Option<Val<'c>>]) -> R<Option<Vec<Val<'c>>>> {
    let x = arg(cg, ins, 0)?.clone();
    if !float_dt(x.dt) || x.rank() == 0 {
        return Ok(None);
    }
    let r = x.rank();
    let perm: Vec<usize> = match n.ints("perm") {
        Some(p) => p
            .iter()
            .map(|&v| if v < 0 { v + r as i64 } else { v } as usize)
            .collect(),
        None => (0..r).rev().collect(),
    };
    let mut seen = perm.clone();
    seen.sort();
    if seen != (0..r).collect::<Vec<_>>() {
        return Ok(None); // the host path reports it
    }
    let st = cg.strides(&x.dims)?;
    let dims: Vec<IntValue<'c>> = perm.iter().map(|&p| x.dims[p]).collect();
    let xs: Vec<IntValue<'c>> = perm.iter().map(|&p| st[p]).collect();
    let ys = cg.strides(&dims)?;
    let total = cg.product(&x.dims)?;
    let y = cg.alloc(x.dt, total)?;
    let z = cg.c64(0);
    copy(
        cg,
        x.dt,
        (y, total),
        (x.ptr, total),
        &dims,
        &xs,
        &ys,
        (z, z),
    )?;
    Ok(Some(vec![Val {
        ptr: y,
        dims,
        dt: x.dt,
    }]))
}

fn concat<'c>(cg: &mut Cg<'c>, n: &Node, ins: &[Option<Val<'c>>]) -> R<Option<Vec<Val<'c>>>> {
    let xs: Vec<Val<'c>> = ins.iter().flatten().cloned().collect();
    if xs.is_empty()
        || xs.len() != ins.len()
        || !float_dt(xs[0].dt)
        || xs
            .iter()
            .any(|v| v.dt != xs[0].dt || v.rank() != xs[0].rank())
        || xs[0].rank() == 0
    {
        return Ok(None);
    }
    let r = xs[0].rank() as i64;
    let mut axis = n.int("axis").unwrap_or(0);
    if axis < 0 {
        axis += r;
    }
    if !(0..r).contains(&axis) {
        return Ok(None);
    }
    let axis = axis as usize;
    let mut dims = xs[0].dims.clone();
    let mut tot = cg.c64(0);
    for v in &xs {
        for (a, (&d, &d0)) in v.dims.iter().zip(&xs[0].dims).enumerate() {
            if a != axis {
                let ok = cg.icmp(IntPredicate::EQ, d, d0)?;
                cg.check(ok, "operand shapes differ off the concatenation axis")?;
            }
        }
        tot = cg.add(tot, v.dims[axis])?;
    }
    dims[axis] = tot;
    let ys = cg.strides(&dims)?;
    let total = cg.product(&dims)?;
    let y = cg.alloc(xs[0].dt, total)?;
    let mut at = cg.c64(0);
    for v in &xs {
        let xs_ = cg.strides(&v.dims)?;
        let len = cg.product(&v.dims)?;
        let yoff = cg.mul(at, ys[axis])?;
        let z = cg.c64(0);
        copy(
            cg,
            v.dt,
            (y, total),
            (v.ptr, len),
            &v.dims,
            &xs_,
            &ys,
            (z, yoff),
        )?;
        at = cg.add(at, v.dims[axis])?;
    }
    Ok(Some(vec![Val {
        ptr: y,
        dims,
        dt: xs[0].dt,
    }]))
}

fn gather<'c>(cg: &mut Cg<'c>, n: &Node, ins: &[Option<Val<'c>>]) -> R<Option<Vec<Val<'c>>>> {
    let x = arg(cg, ins, 0)?.clone();
    let idx = arg(cg, ins, 1)?.clone();
    if !float_dt(x.dt) || idx.dt != DType::I64 || x.rank() == 0 {
        return Ok(None);
    }
    let r = x.rank() as i64;
    let mut axis = n.int("axis").unwrap_or(0);
    if axis < 0 {
        axis += r;
    }
    if !(0..r).contains(&axis) {
        return Ok(None);
    }
    let axis = axis as usize;
    let len = x.dims[axis];
    let nidx = cg.product(&idx.dims)?;
    // Indices are host data (kernels produce floats only): check them here.
    let ip = idx.ptr;
    cg.for_n(nidx, |cg, i| {
        let v = cg.load_i64(ip, i)?;
        let neg = cg.icmp(IntPredicate::SGE, v, cg.sub(cg.c64(0), len)?)?;
        let lt = cg.icmp(IntPredicate::SLT, v, len)?;
        let ok = cg.and(neg, lt)?;
        cg.check(ok, "index out of range")
    })?;
    let outer = cg.product(&x.dims[..axis])?;
    let inner = cg.product(&x.dims[axis + 1..])?;
    let k = match ks::gather("lpc_gather", x.dt.size()) {
        Ok(k) => k,
        Err(e) => return kerr(cg, e),
    };
    let mut dims: Vec<IntValue<'c>> = x.dims[..axis].to_vec();
    dims.extend(&idx.dims);
    dims.extend(&x.dims[axis + 1..]);
    let total = cg.product(&dims)?;
    let xlen = cg.product(&x.dims)?;
    let y = cg.alloc(x.dt, total)?;
    let err = cg.alloc(DType::I32, cg.c64(1))?;
    let _ = outer;
    let args = [
        LArg::Buf(y, total),
        LArg::Buf(x.ptr, xlen),
        LArg::Buf(idx.ptr, nidx),
        LArg::Buf(err, cg.c64(1)),
        LArg::Idx(nidx),
        LArg::Idx(inner),
        LArg::Idx(len),
    ];
    launch(cg, k, total, &args)?;
    cg.release(err)?;
    Ok(Some(vec![Val {
        ptr: y,
        dims,
        dt: x.dt,
    }]))
}

fn linear<'c>(cg: &mut Cg<'c>, n: &Node, ins: &[Option<Val<'c>>]) -> R<Option<Vec<Val<'c>>>> {
    let x = arg(cg, ins, 0)?.clone();
    let parts = n.int("parts").unwrap_or(1).max(1) as usize;
    let bf16 = n.int("bf16").unwrap_or(0) != 0;
    let tr = n.int("transposed").unwrap_or(0) != 0 && !bf16;
    if x.dt != DType::F32 || x.rank() == 0 || ins.len() > parts + 2 {
        return Ok(None);
    }
    let ws: Vec<Val<'c>> = (0..parts)
        .map(|p| arg(cg, ins, 1 + p).cloned())
        .collect::<R<_>>()?;
    let bias = ins.get(1 + parts).cloned().flatten();
    let (wdt, wrank) = if bf16 {
        (DType::Bf16, 3)
    } else {
        (DType::F32, 2)
    };
    if ws.iter().any(|w| w.dt != wdt || w.rank() != wrank)
        || bias.as_ref().is_some_and(|b| b.dt != DType::F32)
    {
        return Ok(None);
    }
    let k = *x.dims.last().expect("rank >= 1");
    // bf16: pairs along K, `[ceil(k/2), n, 2]`.
    let kw = if bf16 {
        cg.sdiv(cg.add(k, cg.c64(1))?, cg.c64(2))?
    } else {
        k
    };
    let mut ntot = cg.c64(0);
    let mut ns = Vec::new();
    for w in &ws {
        let (kin, nn) = if tr {
            (w.dims[1], w.dims[0])
        } else {
            (w.dims[0], w.dims[1])
        };
        let ok = cg.icmp(IntPredicate::EQ, kin, kw)?;
        cg.check(ok, "x does not match the weights")?;
        ntot = cg.add(ntot, nn)?;
        ns.push(nn);
    }
    if let Some(b) = &bias {
        let bl = cg.product(&b.dims)?;
        let ok = cg.icmp(IntPredicate::EQ, bl, ntot)?;
        cg.check(ok, "bias length differs from the output features")?;
    }
    let rows = cg.product(&x.dims[..x.rank() - 1])?;
    let total = cg.mul(rows, ntot)?;
    let y = cg.alloc(DType::F32, total)?;
    let xlen = cg.product(&x.dims)?;
    let mut args = vec![LArg::Buf(y, total), LArg::Buf(x.ptr, xlen)];
    for w in &ws {
        let l = cg.product(&w.dims)?;
        args.push(LArg::Buf(w.ptr, l));
    }
    if let Some(b) = &bias {
        args.push(LArg::Buf(b.ptr, ntot));
    }
    args.extend([LArg::Idx(k), LArg::Idx(ntot)]);
    args.extend(ns.iter().map(|&v| LArg::Idx(v)));
    let lw = match (bf16, tr) {
        (true, _) => kl::LinearWeights::Bf16Pairs,
        (false, true) => kl::LinearWeights::F32Transposed,
        (false, false) => kl::LinearWeights::F32,
    };
    let kern = kl::linear("lpc_linear", parts, lw, bias.is_some());
    launch(cg, kern, total, &args)?;
    let mut dims = x.dims.clone();
    *dims.last_mut().expect("rank >= 1") = ntot;
    Ok(Some(vec![Val {
        ptr: y,
        dims,
        dt: DType::F32,
    }]))
}

/// (b, h, s, d) and the strides of b, h, s of an attention-style operand:
/// `[B, H, S, D]`, or `[B, S, H·D]` with `heads` heads.
#[allow(clippy::type_complexity)]
fn bhsd<'c>(
    cg: &mut Cg<'c>,
    v: &Val<'c>,
    heads: i64,
) -> R<Option<([IntValue<'c>; 4], [IntValue<'c>; 3])>> {
    Ok(match v.rank() {
        4 => {
            let st = cg.strides(&v.dims)?;
            Some((
                [v.dims[0], v.dims[1], v.dims[2], v.dims[3]],
                [st[0], st[1], st[2]],
            ))
        }
        3 if heads > 0 => {
            let h = cg.c64(heads);
            let hd = v.dims[2];
            let d = cg.sdiv(hd, h)?;
            let ok = cg.icmp(IntPredicate::EQ, cg.mul(d, h)?, hd)?;
            cg.check(ok, "the head count does not divide the hidden size")?;
            let sb = cg.mul(v.dims[1], hd)?;
            Some(([v.dims[0], h, v.dims[1], d], [sb, d, hd]))
        }
        _ => None,
    })
}

fn rope<'c>(cg: &mut Cg<'c>, n: &Node, ins: &[Option<Val<'c>>]) -> R<Option<Vec<Val<'c>>>> {
    let x = arg(cg, ins, 0)?.clone();
    let (cos, sin) = (arg(cg, ins, 1)?.clone(), arg(cg, ins, 2)?.clone());
    let pos = ins.get(3).cloned().flatten();
    if x.dt != DType::F32
        || cos.dt != DType::F32
        || sin.dt != DType::F32
        || cos.rank() == 0
        || pos.as_ref().is_some_and(|p| p.dt != DType::I64)
    {
        return Ok(None);
    }
    let heads = n.int("num_heads").unwrap_or(0);
    let Some(([b, h, s, d], _)) = bhsd(cg, &x, heads)? else {
        return Ok(None);
    };
    let rot = match n.int("rotary_embedding_dim").unwrap_or(0) {
        0 => d,
        r => cg.c64(r),
    };
    let half = cg.sdiv(rot, cg.c64(2))?;
    let cw = *cos.dims.last().expect("rank >= 1");
    let ok = cg.and(
        cg.icmp(IntPredicate::SLE, rot, d)?,
        cg.icmp(IntPredicate::SGE, cw, half)?,
    )?;
    cg.check(
        ok,
        "the rotary dimension does not fit the head size and caches",
    )?;
    let clen = cg.product(&cos.dims)?;
    let slen = cg.product(&sin.dims)?;
    let same = cg.icmp(IntPredicate::EQ, clen, slen)?;
    cg.check(same, "cos and sin caches differ in size")?;
    let rows = cg.sdiv(clen, cw)?;
    // The kernel reads row `s` (shared caches) when cb = 1, else b·S + s.
    let mut cb = cg.c64(1);
    if let Some(p) = &pos {
        // Position ids are host data: checked here.
        let np = cg.product(&p.dims)?;
        let ok = cg.icmp(IntPredicate::EQ, np, cg.mul(b, s)?)?;
        cg.check(ok, "position_ids must be [B, S]")?;
        let pp = p.ptr;
        cg.for_n(np, |cg, i| {
            let v = cg.load_i64(pp, i)?;
            let ok = cg.and(
                cg.icmp(IntPredicate::SGE, v, cg.c64(0))?,
                cg.icmp(IntPredicate::SLT, v, rows)?,
            )?;
            cg.check(ok, "a position id is outside the caches")
        })?;
    } else {
        let full = cg.icmp(IntPredicate::EQ, rows, cg.mul(b, s)?)?;
        let shared = cg.icmp(IntPredicate::EQ, rows, s)?;
        let ok = cg.b.build_or(full, shared, "")?;
        cg.check(
            ok,
            "without position_ids, caches must be [B or 1, S, rot/2]",
        )?;
        cb = cg.select_i(shared, cg.c64(1), cg.c64(2))?;
    }
    let spec = knn::RopeSpec {
        x: x.dt,
        cache: cos.dt,
        interleaved: n.int("interleaved").unwrap_or(0) != 0,
        position_ids: pos.is_some(),
        bhsd: x.rank() == 4,
    };
    let k = match knn::rope("lpc_rope", &spec) {
        Ok(k) => k,
        Err(e) => return kerr(cg, e),
    };
    let total = cg.product(&x.dims)?;
    let y = cg.alloc(DType::F32, total)?;
    let err = cg.alloc(DType::I32, cg.c64(1))?;
    let mut args = vec![
        LArg::Buf(y, total),
        LArg::Buf(x.ptr, total),
        LArg::Buf(cos.ptr, clen),
        LArg::Buf(sin.ptr, slen),
    ];
    if let Some(p) = &pos {
        let np = cg.product(&p.dims)?;
        args.push(LArg::Buf(p.ptr, np));
    }
    args.push(LArg::Buf(err, cg.c64(1)));
    for v in [h, s, d, rot, cw, cb, rows] {
        args.push(LArg::Idx(v));
    }
    let count = cg.product(&[b, h, s])?;
    launch(cg, k, count, &args)?;
    cg.release(err)?;
    Ok(Some(vec![Val {
        ptr: y,
        dims: x.dims.clone(),
        dt: DType::F32,
    }]))
}

fn attention<'c>(cg: &mut Cg<'c>, n: &Node, ins: &[Option<Val<'c>>]) -> R<Option<Vec<Val<'c>>>> {
    let (q, k, v) = (
        arg(cg, ins, 0)?.clone(),
        arg(cg, ins, 1)?.clone(),
        arg(cg, ins, 2)?.clone(),
    );
    let mask = ins.get(3).cloned().flatten();
    let (pk, pv) = (ins.get(4).cloned().flatten(), ins.get(5).cloned().flatten());
    let seqlens = ins.get(6).cloned().flatten();
    if seqlens.is_some() && mask.is_some() {
        return cg.err("a mask cannot be combined with seqlens_k");
    }
    if seqlens
        .as_ref()
        .is_some_and(|s| !matches!(s.dt, DType::I32 | DType::I64))
        || [&q, &k, &v].iter().any(|t| t.dt != DType::F32)
        || pk.is_some() != pv.is_some()
        || pk
            .as_ref()
            .is_some_and(|p| p.rank() != 4 || p.dt != DType::F32)
        || pv
            .as_ref()
            .is_some_and(|p| p.rank() != 4 || p.dt != DType::F32)
        || mask.as_ref().is_some_and(|m| {
            m.rank() == 0 || m.rank() > 4 || !matches!(m.dt, DType::F32 | DType::Bool)
        })
    {
        return Ok(None);
    }
    let hq_attr = n.int("q_num_heads").unwrap_or(0);
    let hkv_attr = n.int("kv_num_heads").unwrap_or(0);
    let (Some((qd, qs)), Some((kd, ks_)), Some((vd, vs))) = (
        bhsd(cg, &q, hq_attr)?,
        bhsd(cg, &k, hkv_attr)?,
        bhsd(cg, &v, hkv_attr)?,
    ) else {
        return Ok(None);
    };
    let [b, hq, l, d] = qd;
    let [_, hkv, sn, _] = kd;
    let dv = vd[3];
    let ok = cg.and(
        cg.icmp(IntPredicate::SGT, hkv, cg.c64(0))?,
        cg.icmp(
            IntPredicate::EQ,
            cg.srem(hq, cg.smax(hkv, cg.c64(1))?)?,
            cg.c64(0),
        )?,
    )?;
    cg.check(ok, "query heads do not group over the kv heads")?;
    // Present keys and values, contiguous [B, Hkv, T, D]: the cache, then
    // the new rows (strided copies on the device).
    let past = match &pk {
        Some(p) => p.dims[2],
        None => cg.c64(0),
    };
    let t = cg.add(past, sn)?;
    let mut present = Vec::new();
    // GroupQueryAttention's cache (seqlens_k): per-batch past lengths
    // `seqlens_k[b] + 1 - S` (host data, checked here), the cache rows below
    // them and the new rows after them, the rest of the present zero.
    let pastb = match &seqlens {
        Some(sl) => {
            let nsl = cg.product(&sl.dims)?;
            let ok = cg.icmp(IntPredicate::EQ, nsl, b)?;
            cg.check(ok, "seqlens_k must have one entry per batch")?;
            host_op(cg)?;
            let buf = cg.alloc(DType::I64, b)?;
            let (sp, sdt) = (sl.ptr, sl.dt);
            cg.for_n(b, |cg, bi| {
                let super::elementwise::S::I(x) = cg.load_s(sdt, sp, bi)? else {
                    return cg.err("seqlens_k must be integers");
                };
                let pb = cg.sub(cg.add(x, cg.c64(1))?, sn)?;
                let ok = cg.and(
                    cg.icmp(IntPredicate::SGE, pb, cg.c64(0))?,
                    cg.icmp(IntPredicate::SLE, pb, past)?,
                )?;
                cg.check(
                    ok,
                    "seqlens_k is inconsistent with the new tokens and the cache",
                )?;
                cg.store(DType::I64, buf, bi, pb.into())
            })?;
            Some(buf)
        }
        None => None,
    };
    for (new, (nd, nst), old, dd) in [(&k, (kd, ks_), &pk, d), (&v, (vd, vs), &pv, dv)] {
        if let Some(pb) = pastb {
            let pdims = [b, hkv, t, dd];
            let pst = cg.strides(&pdims)?;
            let plen = cg.product(&pdims)?;
            let buf = cg.alloc(DType::F32, plen)?;
            let z = match ks::zero("lpc_zero", 4) {
                Ok(k) => k,
                Err(e) => return kerr(cg, e),
            };
            launch(cg, z, plen, &[LArg::Buf(buf, plen)])?;
            let mut boxes = Vec::new();
            if let Some(o) = old {
                let ost = cg.strides(&o.dims)?;
                let olen = cg.product(&o.dims)?;
                boxes.push((true, o.ptr, olen, o.dims[2], [ost[0], ost[1], ost[2]]));
            }
            let nlen = cg.product(&new.dims)?;
            boxes.push((false, new.ptr, nlen, nd[2], nst));
            for (cached, src, len, rows, xs) in boxes {
                let mut args = vec![
                    LArg::Buf(buf, plen),
                    LArg::Buf(src, len),
                    LArg::Buf(pb, b),
                    LArg::Idx(hkv),
                    LArg::Idx(rows),
                    LArg::Idx(dd),
                ];
                args.extend(xs.iter().map(|&v| LArg::Idx(v)));
                args.extend(pst[..3].iter().map(|&v| LArg::Idx(v)));
                let count = cg.product(&[b, hkv, rows, dd])?;
                launch(cg, ks::kv_rows("lpc_kv_rows", cached), count, &args)?;
            }
            present.push((buf, pdims, plen));
            continue;
        }
        let pdims = [b, hkv, t, dd];
        let pst = cg.strides(&pdims)?;
        let plen = cg.product(&pdims)?;
        let buf = cg.alloc(DType::F32, plen)?;
        let z = cg.c64(0);
        if let Some(o) = old {
            let ost = cg.strides(&o.dims)?;
            let olen = cg.product(&o.dims)?;
            copy(
                cg,
                DType::F32,
                (buf, plen),
                (o.ptr, olen),
                &o.dims,
                &ost,
                &pst,
                (z, z),
            )?;
        }
        let nlen = cg.product(&new.dims)?;
        let xs = [nst[0], nst[1], nst[2], cg.c64(1)];
        let yoff = cg.mul(past, pst[2])?;
        copy(
            cg,
            DType::F32,
            (buf, plen),
            (new.ptr, nlen),
            &nd,
            &xs,
            &pst,
            (z, yoff),
        )?;
        present.push((buf, pdims, plen));
    }
    let scale = match n.float("scale") {
        Some(s) if s != 0.0 => cg.cf32(s),
        _ => {
            let df = cg.b.build_signed_int_to_float(d, cg.f32t(), "")?;
            let sq = cg
                .intrinsic("llvm.sqrt", &[cg.f32t().into()], &[df.into()])?
                .into_float_value();
            cg.b.build_float_div(cg.cf32(1.0), sq, "")?
        }
    };
    let softcap = n.float("softcap").unwrap_or(0.0);
    let spec = knn::AttentionSpec {
        mask: match mask.as_ref().map(|m| m.dt) {
            None => knn::Mask::None,
            Some(DType::Bool) => knn::Mask::Bool,
            Some(_) => knn::Mask::Float,
        },
        causal: n.int("is_causal").unwrap_or(0) != 0,
        softcap: softcap > 0.0,
        per_batch_past: pastb.is_some(),
    };
    let kern = match knn::attention("lpc_attention", &spec) {
        Ok(k) => k,
        Err(e) => return kerr(cg, e),
    };
    let three_d = q.rank() == 3;
    let ylen = cg.product(&[b, hq, l, dv])?;
    let y = cg.alloc(DType::F32, ylen)?;
    let (ob, oh, ol) = if three_d {
        let hd = cg.mul(hq, dv)?;
        (cg.mul(l, hd)?, dv, hd)
    } else {
        let st = cg.strides(&[b, hq, l, dv])?;
        (st[0], st[1], st[2])
    };
    let qlen = cg.product(&q.dims)?;
    let mut args = vec![
        LArg::Buf(y, ylen),
        LArg::Buf(q.ptr, qlen),
        LArg::Buf(present[0].0, present[0].2),
        LArg::Buf(present[1].0, present[1].2),
    ];
    let mut mask_args = Vec::new();
    if let Some(m) = &mask {
        let mut md = vec![cg.c64(1); 4 - m.rank()];
        md.extend(&m.dims);
        let own = cg.strides(&md)?;
        let targets = [b, hq, l];
        for a in 0..3 {
            let is1 = cg.icmp(IntPredicate::EQ, md[a], cg.c64(1))?;
            let same = cg.icmp(IntPredicate::EQ, md[a], targets[a])?;
            let ok = cg.b.build_or(is1, same, "")?;
            cg.check(ok, "the mask does not broadcast over the scores")?;
            mask_args.push(LArg::Idx(cg.select_i(is1, cg.c64(0), own[a])?));
        }
        let w = md[3];
        let ok = cg.icmp(IntPredicate::SLE, w, t)?;
        cg.check(ok, "the mask is wider than the keys")?;
        mask_args.push(LArg::Idx(cg.c64(1)));
        mask_args.push(LArg::Idx(w));
        let mlen = cg.product(&m.dims)?;
        args.push(LArg::Buf(m.ptr, mlen));
    }
    if let Some(pb) = pastb {
        args.push(LArg::Buf(pb, b));
    }
    for x in [hq, l, d, hkv, t, dv, past, qs[0], qs[1], qs[2], ob, oh, ol] {
        args.push(LArg::Idx(x));
    }
    args.extend(mask_args);
    args.push(LArg::F32(scale));
    args.push(LArg::F32(cg.cf32(softcap)));
    let rows = cg.product(&[b, hq, l])?;
    launch(cg, kern, rows, &args)?;
    if let Some(pb) = pastb {
        cg.release(pb)?;
    }
    let ydims = if three_d {
        vec![b, l, cg.mul(hq, dv)?]
    } else {
        vec![b, hq, l, dv]
    };
    let [(kb, kdims, _), (vb, vdims, _)] = [present[0], present[1]];
    Ok(Some(vec![
        Val {
            ptr: y,
            dims: ydims,
            dt: DType::F32,
        },
        Val {
            ptr: kb,
            dims: kdims.to_vec(),
            dt: DType::F32,
        },
        Val {
            ptr: vb,
            dims: vdims.to_vec(),
            dt: DType::F32,
        },
    ]))
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
    // Integer and bool results are computed on the host (see `emit`).
    if !float_dt(out) {
        return Ok(None);
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
    // Mixed formats and HiF8's `hybrid` rounding stay on the host.
    let (a_mxfp4, a_hif4, a_hif8) = match af {
        None => (false, false, false),
        Some(Format::Mxfp4(_)) if matches!(wf, Format::Mxfp4(_)) => (true, false, false),
        Some(Format::Hif4(_)) if matches!(wf, Format::Hif4(_)) => (false, true, false),
        Some(Format::Hif8(m)) if matches!(wf, Format::Hif8(_)) && m.name() != "hybrid" => {
            (false, false, true)
        }
        Some(_) => return Ok(None),
    };
    let w_scaled = n.int("wscale").unwrap_or(0) != 0;
    let a_scaled = n.string("ascale") == Some("pow2");
    if a_scaled && !a_hif8 {
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
    let wexps: Vec<Val<'c>> = if w_scaled {
        (0..parts)
            .map(|p| arg(cg, ins, 1 + parts + p).cloned())
            .collect::<R<_>>()?
    } else {
        Vec::new()
    };
    if wexps.iter().any(|e| e.dt != DType::I32) {
        return Ok(None);
    }
    let after = 1 + parts + wexps.len();
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
        a_hif8,
        a_hif4,
        a_scaled,
        w_scaled,
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
    if a_hif4 || a_mxfp4 {
        // 4-bit: integer codes (one i8 per element) and one value per block
        // (HiF4's f32 scale, MXFP4's E8M0 exponent), the same parameters.
        let (per, sdt, kern) = match af {
            Some(Format::Hif4(v)) => (
                64,
                DType::F32,
                kq::quant_hif4("lpc_quant4", v.name() == "amct"),
            ),
            Some(Format::Mxfp4(m)) => (
                32,
                DType::I32,
                kq::quant_mxfp4("lpc_quant", m.name() == "ties-away"),
            ),
            _ => return kerr(cg, "4-bit activations without a 4-bit format".into()),
        };
        let nblk = cg.mul(rows, nbc)?;
        let ncodes = cg.mul(nblk, cg.c64(per))?;
        let codes = cg.alloc(DType::I8, ncodes)?;
        let per_block = cg.alloc(sdt, nblk)?;
        let qargs = [
            LArg::Buf(codes, ncodes),
            LArg::Buf(per_block, nblk),
            LArg::Buf(a, xlen),
            LArg::Idx(kc),
            LArg::Idx(nbc),
        ];
        launch(cg, kern, nblk, &qargs)?;
        args.extend([LArg::Buf(codes, ncodes), LArg::Buf(per_block, nblk)]);
        scratch.extend([codes, per_block]);
    } else if a_hif8 {
        let codes = cg.alloc(DType::U8, xlen)?;
        let exps = cg.alloc(DType::I32, rows)?;
        let ta = table(cg, "lpc.hif8_ta", &lpc_runtime::formats::hif8::TA_TABLE[..])?;
        let saturate = matches!(af, Some(Format::Hif8(m)) if m.name() == "saturate");
        let qargs = [
            LArg::Buf(codes, xlen),
            LArg::Buf(exps, rows),
            LArg::Buf(a, xlen),
            LArg::Buf(ta, cg.c64(8192)),
            LArg::Idx(kc),
        ];
        launch(
            cg,
            kq::quant_hif8("lpc_quant8", saturate, a_scaled),
            rows,
            &qargs,
        )?;
        args.push(LArg::Buf(codes, xlen));
        if a_scaled {
            args.push(LArg::Buf(exps, rows));
        }
        scratch.extend([codes, exps, ta]);
    } else {
        args.push(LArg::Buf(a, xlen));
    }
    for (w, &len) in ws.iter().zip(&wlens) {
        args.push(LArg::Buf(w.ptr, len));
    }
    for (e, w) in wexps.iter().zip(&ws) {
        args.push(LArg::Buf(e.ptr, w.dims[0]));
    }
    if matches!(wf, Format::Hif8(_)) {
        let bytes: Vec<u8> = lpc_runtime::formats::hif8::DECODE_F32_BITS
            .iter()
            .flat_map(|b| b.to_le_bytes())
            .collect();
        let lut = table(cg, "lpc.hif8_decode", &bytes)?;
        args.push(LArg::Buf(lut, cg.c64(256)));
        scratch.push(lut);
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

/// A constant table of the runtime (HiF8's decode and encode tables) in a
/// run buffer: library constants are host memory, kernels need
/// device-visible memory. Filled on the host, after waiting for kernels
/// that may still use the recycled buffer.
fn table<'c>(cg: &mut Cg<'c>, name: &str, bytes: &[u8]) -> R<PointerValue<'c>> {
    let g = match cg.m.get_global(name) {
        Some(g) => g,
        None => {
            let arr = cg.cx.const_string(bytes, false);
            let g = cg.m.add_global(arr.get_type(), None, name);
            g.set_initializer(&arr);
            g.set_constant(true);
            g.set_linkage(Linkage::Private);
            g
        }
    };
    host_op(cg)?;
    let len = cg.c64(bytes.len() as i64);
    let buf = cg.alloc(DType::U8, len)?;
    cg.b.build_memcpy(buf, 1, g.as_pointer_value(), 1, len)?;
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
    let st = cg.dev.as_ref().expect("device");
    let list = |m: &std::collections::BTreeMap<String, usize>| -> String {
        let v: Vec<String> = m.iter().map(|(k, n)| format!("{k} x{n}")).collect();
        if v.is_empty() {
            "-".into()
        } else {
            v.join(", ")
        }
    };
    code.summary = format!(
        "{} GPU kernels; ops on the device: {}; on the host: {}",
        kernels.len(),
        list(&st.on_device),
        list(&st.on_host)
    );
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
