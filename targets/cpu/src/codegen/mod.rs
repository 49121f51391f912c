//! Code generation: an lpc IR graph (canonical or quantized) to an LLVM module
//! with one graph function, the model descriptor and the exported
//! `lpc_model_load` wrapper.
//!
//! The generated graph function binds every dimension at run time (input
//! dimensions from the descriptors, the rest from each op's shape rule, with
//! compile-time constants where shapes are static so LLVM folds them), runs
//! the ops in topological order as loops (the heavy ones, `lpc.linear`,
//! `lpc.qgemm`, `lpc.attention`, outlined into parallel bodies), allocates
//! each intermediate from the runtime and returns it after its last use.
//! Views (`Reshape`, `Squeeze`, ...) share their operand's buffer.

mod core;
mod device;
mod elementwise;
pub mod layout;
pub mod legalize;
mod linalg;
mod nn;
mod shape;

pub use self::core::CgError;
use self::core::{Cg, Val, R};
pub use self::device::{DeviceCode, DeviceOptions, LowerFn};
use inkwell::context::Context;
use inkwell::module::{Linkage, Module};
use inkwell::values::{BasicValueEnum, PointerValue};
use lpc_ir::{Def, Dim, Graph, Node, ValueId};
use lpc_rt::desc::{DimDesc, ModelDesc, SymbolDesc, TensorDesc};
use std::collections::HashMap;

/// What the generator needs besides the graph.
#[derive(Clone, Debug)]
pub struct Options {
    /// The model's name in messages.
    pub name: String,
    /// Put the weights into the library instead of a weights file.
    pub embed_weights: bool,
    /// Largest value a symbolic dimension may be bound to.
    pub max_dim: u64,
    /// The target has AVX-512 VNNI and BW: 4-bit `qgemm` uses `vpdpbusd`.
    pub vnni512: bool,
    /// The target has AVX-512 VBMI and BW: weights in the CPU layout (W8A8
    /// HiF8 decodes with `vpermi2b`, 4-bit strips with `vpermb`/`vpermi2b`).
    pub vbmi512: bool,
    /// The target has AVX-512 BF16: the W8A8 HiF8 panel GEMM multiplies
    /// bf16 pairs with `vdpbf16ps` (every HiF8 value is exact in bf16).
    pub bf16_512: bool,
    /// The target is an AMD Zen: 4-bit strips of a single row over large
    /// weights pause once per group (see `PACE_MIN_BYTES` in `linalg.rs`).
    pub pace_strips: bool,
    /// Generate a GPU library (`--target cuda`): ops with kernels become
    /// launches (see `device.rs`).
    pub device: Option<DeviceOptions>,
    /// Time every node (`lpc compile --profile`): the graph marks each
    /// node's start with `lpc_rt_profile`, and `lpc_model_profile` reports.
    pub profile: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            name: "model".into(),
            embed_weights: false,
            max_dim: 1 << 24,
            vnni512: false,
            vbmi512: false,
            bf16_512: false,
            pace_strips: false,
            device: None,
            profile: false,
        }
    }
}

/// Where each constant lives in the weights data region.
#[derive(Clone, Debug, Default)]
pub struct WeightsLayout {
    /// (value, offset, length in bytes), in offset order.
    pub entries: Vec<(ValueId, u64, u64)>,
    pub len: u64,
    pub crc: u32,
    /// Constants stored in the CPU layout (`layout.rs`), with their format
    /// and K.
    pub repacked: HashMap<ValueId, (lpc_runtime::Format, usize)>,
}

impl WeightsLayout {
    /// Lays out every constant that generated code reads, 64-byte aligned,
    /// chooses which `qgemm` weights the CPU kernels read in their own
    /// layout (AVX-512 VNNI/VBMI targets, not GPU libraries; the index of
    /// the weights file marks them), and computes the region's
    /// CRC (one streaming pass over the mapped tensors, repacking one tensor
    /// at a time).
    pub fn plan(g: &Graph, o: &Options) -> Self {
        let mut cand = if o.device.is_none() {
            layout::candidates(g, o.vnni512, o.vbmi512)
        } else {
            HashMap::new()
        };
        let mut used: Vec<ValueId> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let order = g.topo_order().unwrap_or_default();
        for n in order {
            for v in g.node(n).inputs.iter().flatten() {
                if g.constant(*v).is_some() && seen.insert(*v) {
                    used.push(*v);
                }
            }
        }
        for &o in &g.outputs {
            if g.constant(o).is_some() && seen.insert(o) {
                used.push(o);
            }
        }
        let align = lpc_rt::weights::ALIGN as u64;
        let mut off = 0u64;
        let mut entries = Vec::with_capacity(used.len());
        let mut h = crc32fast::Hasher::new();
        let zeros = [0u8; 64];
        let mut repacked = HashMap::new();
        for v in used {
            let t = g.constant(v).expect("constant");
            let pad = (align - off % align) % align;
            h.update(&zeros[..pad as usize]);
            off += pad;
            entries.push((v, off, t.data.len() as u64));
            match cand
                .remove(&v)
                .and_then(|(f, k)| Some((f, k, layout::repack(f, &t.data, k)?)))
            {
                Some((f, k, data)) => {
                    h.update(&data);
                    repacked.insert(v, (f, k));
                }
                None => h.update(&t.data),
            }
            off += t.data.len() as u64;
        }
        Self {
            entries,
            len: off,
            crc: h.finalize(),
            repacked,
        }
    }

    /// Calls `f` with the data region's pieces in order, `(offset, bytes)`
    /// (the weights file and embedded weights): mapped constants as they
    /// are, CPU-layout weights repacked one at a time.
    pub fn for_each_piece<E>(
        &self,
        g: &Graph,
        mut f: impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        for &(v, off, _) in &self.entries {
            let data = &g.constant(v).expect("constant").data[..];
            match self.repacked.get(&v) {
                Some(&(fmt, k)) => {
                    let r = layout::repack(fmt, data, k).expect("checked when planned");
                    f(off, &r)?
                }
                None => f(off, data)?,
            }
        }
        Ok(())
    }
}

fn dim_desc(
    d: &Dim,
    syms: &mut Vec<SymbolDesc>,
    fresh: &mut dyn FnMut() -> String,
    max: u64,
) -> DimDesc {
    let mut sym = |name: String| -> DimDesc {
        if let Some(i) = syms.iter().position(|s| s.name == name) {
            return DimDesc::Sym(i as u32);
        }
        syms.push(SymbolDesc { name, max });
        DimDesc::Sym(syms.len() as u32 - 1)
    };
    match d {
        Dim::Fixed(n) => DimDesc::Fixed(*n as u64),
        Dim::Sym(s) => sym(s.clone()),
        Dim::Unknown => sym(fresh()),
    }
}

/// The descriptor of a graph's inputs and outputs.
pub fn describe(g: &Graph, o: &Options, w: &WeightsLayout) -> R<ModelDesc> {
    let mut symbols = Vec::new();
    let mut k = 0;
    let mut fresh = || {
        k += 1;
        format!("?{k}")
    };
    let mut tensors = |ids: &[ValueId], what: &str| -> R<Vec<TensorDesc>> {
        ids.iter()
            .map(|&v| {
                let val = g.value(v);
                // An output's type may be unknown until code generation
                // (filled in by `generate_into`, dtype 0 until then).
                let (ty, shape) = match &val.ty {
                    Some(ty) => (ty, ty.shape.as_ref()),
                    None if what == "output" => {
                        return Ok(TensorDesc {
                            name: val.name.clone(),
                            dtype: 0,
                            dims: Vec::new(),
                        })
                    }
                    None => {
                        return Err(CgError::Graph(format!(
                            "{what} `{}` has no element type",
                            val.name
                        )))
                    }
                };
                let Some(shape) = shape else {
                    if what == "output" {
                        return Ok(TensorDesc {
                            name: val.name.clone(),
                            dtype: 0,
                            dims: Vec::new(),
                        });
                    }
                    return Err(CgError::Graph(format!(
                        "{what} `{}` has no known rank",
                        val.name
                    )));
                };
                if shape.len() > lpc_rt::MAX_RANK {
                    return Err(CgError::Graph(format!(
                        "{what} `{}` has rank {} > {}",
                        val.name,
                        shape.len(),
                        lpc_rt::MAX_RANK
                    )));
                }
                Ok(TensorDesc {
                    name: val.name.clone(),
                    dtype: ty.dtype.onnx_code(),
                    dims: shape
                        .iter()
                        .map(|d| dim_desc(d, &mut symbols, &mut fresh, o.max_dim))
                        .collect(),
                })
            })
            .collect()
    };
    let inputs = tensors(&g.inputs, "input")?;
    let outputs = tensors(&g.outputs, "output")?;
    Ok(ModelDesc {
        name: o.name.clone(),
        symbols,
        inputs,
        outputs,
        weights_len: w.len,
        weights_crc: w.crc,
    })
}

/// The generated module and what was decided on the way.
#[derive(Debug)]
pub struct Generated<'c> {
    pub module: Module<'c>,
    pub desc: ModelDesc,
    pub weights: WeightsLayout,
    /// The kernels of a GPU library, lowered.
    pub device: Option<DeviceCode>,
}

/// Generates the module for a graph.
pub fn generate<'c>(cx: &'c Context, g: &Graph, o: &Options) -> R<Generated<'c>> {
    let weights = WeightsLayout::plan(g, o);
    let mut desc = describe(g, o, &weights)?;
    let (module, device) = generate_into(cx, cx.create_module(&o.name), g, o, &mut desc, &weights)?;
    Ok(Generated {
        module,
        desc,
        weights,
        device,
    })
}

fn generate_into<'c>(
    cx: &'c Context,
    m: Module<'c>,
    g: &Graph,
    o: &Options,
    desc: &mut ModelDesc,
    w: &WeightsLayout,
) -> R<(Module<'c>, Option<DeviceCode>)> {
    let p = cx.ptr_type(inkwell::AddressSpace::default());
    let i32t = cx.i32_type();
    let i64t = cx.i64_type();
    let graph_fn = m.add_function(
        "lpc_graph_run",
        i32t.fn_type(&[p.into(), p.into(), p.into(), p.into()], false),
        Some(Linkage::Internal),
    );
    let entry = cx.append_basic_block(graph_fn, "entry");
    let fail = cx.append_basic_block(graph_fn, "fail");
    let b = cx.create_builder();
    b.position_at_end(fail);
    b.build_return(Some(&i32t.const_int(1, false)))?;
    b.position_at_end(entry);
    let mut cg = Cg {
        cx,
        m,
        b,
        f: graph_fn,
        ctx: graph_fn.get_nth_param(0).expect("ctx").into_pointer_value(),
        fail: Some(fail),
        vnni512: o.vnni512,
        bf16_512: o.bf16_512,
        pace_strips: o.pace_strips,
        cpu_layout: w.repacked.keys().copied().collect(),
        dev: o.device.as_ref().map(|_| device::DevState::default()),
        node: String::new(),
        op: String::new(),
        counter: 0,
    };
    let wptr = graph_fn.get_nth_param(1).expect("w").into_pointer_value();
    let inptr = graph_fn.get_nth_param(2).expect("in").into_pointer_value();
    let outptr = graph_fn.get_nth_param(3).expect("out").into_pointer_value();

    // The C tensor descriptor: {i32 dtype, i32 rank, [8 x i64] dims, ptr}.
    let tdesc = cx.struct_type(
        &[
            i32t.into(),
            i32t.into(),
            i64t.array_type(lpc_rt::MAX_RANK as u32).into(),
            p.into(),
        ],
        false,
    );
    let field = |cg: &Cg<'c>, base: PointerValue<'c>, i: usize, f: u32| -> R<PointerValue<'c>> {
        // SAFETY: descriptors are arrays of `tdesc` of the declared length.
        let t = unsafe {
            cg.b.build_in_bounds_gep(tdesc, base, &[cg.c64(i as i64)], "")?
        };
        Ok(cg.b.build_struct_gep(tdesc, t, f, "")?)
    };

    let mut env: HashMap<ValueId, Val<'c>> = HashMap::new();
    // Graph inputs.
    for (i, &v) in g.inputs.iter().enumerate() {
        let d = &desc.inputs[i];
        let dt = g.value(v).ty.as_ref().expect("described").dtype;
        let data = field(&cg, inptr, i, 3)?;
        let ptr = cg.b.build_load(p, data, "")?.into_pointer_value();
        let dimsp = field(&cg, inptr, i, 2)?;
        let mut dims = Vec::with_capacity(d.dims.len());
        for (k, dd) in d.dims.iter().enumerate() {
            dims.push(match dd {
                DimDesc::Fixed(n) => cg.c64(*n as i64),
                DimDesc::Sym(_) => cg.load_i64(dimsp, cg.c64(k as i64))?,
            });
        }
        cg.ty(dt).map_err(|_| {
            CgError::Graph(format!(
                "input `{}`: element type {dt} is not supported by code generation yet",
                g.value(v).name
            ))
        })?;
        env.insert(v, Val { ptr, dims, dt });
    }
    // Constants: pointers into the weights region.
    for &(v, off, _) in &w.entries {
        let t = g.constant(v).expect("constant");
        cg.node = g.value(v).name.clone();
        cg.op = "constant".into();
        cg.ty(t.dtype)?;
        let ptr = cg.gep_bytes(wptr, cg.c64(off as i64))?;
        let dims = t.dims.iter().map(|&d| cg.c64(d as i64)).collect();
        env.insert(
            v,
            Val {
                ptr,
                dims,
                dt: t.dtype,
            },
        );
    }

    // Buffer lifetimes: each allocated result is a root; views share their
    // operand's root; a root is released after the last use of its values.
    let order = g
        .topo_order()
        .map_err(|n| CgError::Graph(format!("node `{}` is on a cycle", g.node(n).name)))?;
    let mut uses: HashMap<ValueId, usize> = HashMap::new();
    for &n in &order {
        for v in g.node(n).inputs.iter().flatten() {
            *uses.entry(*v).or_default() += 1;
        }
    }
    for &v in &g.outputs {
        *uses.entry(v).or_default() += 1;
    }
    struct Root<'c> {
        ptr: PointerValue<'c>,
        pending: usize,
    }
    let mut roots: Vec<Root<'c>> = Vec::new();
    let mut root_of: HashMap<ValueId, usize> = HashMap::new();

    for (step, &nid) in order.iter().enumerate() {
        let node = g.node(nid);
        cg.node = node.name.clone();
        cg.op = node.op.clone();
        if o.profile {
            let label = cg.cstr(&format!("{}\t{}", node.op, node.name));
            let i = cg.c64(step as i64);
            cg.call_void(
                cg.rt("lpc_rt_profile"),
                &[cg.ctx.into(), i.into(), label.into()],
            )?;
        }
        let ins: Vec<Option<Val<'c>>> = node
            .inputs
            .iter()
            .map(|v| v.map(|v| env.get(&v).cloned()).unwrap_or(None))
            .collect();
        for (k, v) in node.inputs.iter().enumerate() {
            if let (Some(v), None) = (v, &ins[k]) {
                return cg.err(format!("operand `{}` has no value", g.value(*v).name));
            }
        }
        let mut outs = emit(&mut cg, g, node, &ins)?;
        if outs.len() < node.outputs.len() {
            return cg.err(format!(
                "produced {} results, the node has {}",
                outs.len(),
                node.outputs.len()
            ));
        }
        // Results the node does not declare (attention's present key and
        // value without cache outputs) are freed at once, unless they are
        // an operand's buffer.
        for extra in outs.split_off(node.outputs.len()) {
            let is_operand = ins.iter().flatten().any(|x| x.ptr == extra.ptr);
            if !is_operand {
                cg.release(extra.ptr)?;
            }
        }
        for (&v, val) in node.outputs.iter().zip(outs) {
            let n_uses = uses.get(&v).copied().unwrap_or(0);
            let alias = node
                .inputs
                .iter()
                .flatten()
                .find(|u| env.get(u).is_some_and(|x| x.ptr == val.ptr))
                .copied();
            match alias {
                Some(u) => {
                    if let Some(&r) = root_of.get(&u) {
                        roots[r].pending += n_uses;
                        root_of.insert(v, r);
                    }
                }
                None => {
                    if n_uses == 0 {
                        cg.release(val.ptr)?;
                    } else {
                        roots.push(Root {
                            ptr: val.ptr,
                            pending: n_uses,
                        });
                        root_of.insert(v, roots.len() - 1);
                    }
                }
            }
            env.insert(v, val);
        }
        for v in node.inputs.iter().flatten() {
            if let Some(&r) = root_of.get(v) {
                roots[r].pending -= 1;
                if roots[r].pending == 0 {
                    cg.release(roots[r].ptr)?;
                }
            }
        }
    }

    if o.profile {
        let (end, none) = (cg.c64(-1), cg.ptrt().const_null());
        cg.call_void(
            cg.rt("lpc_rt_profile"),
            &[cg.ctx.into(), end.into(), none.into()],
        )?;
    }
    // Outputs: a root that is exactly one output is handed over; anything
    // else (views, inputs, constants, repeated outputs) is copied.
    cg.node = "outputs".into();
    cg.op = "return".into();
    if cg.dev.is_some() {
        device::host_op(&mut cg)?;
    }
    let mut handed: Vec<usize> = Vec::new();
    for (i, &v) in g.outputs.iter().enumerate() {
        let val = env.get(&v).cloned().ok_or_else(|| {
            CgError::Graph(format!("output `{}` was not computed", g.value(v).name))
        })?;
        if desc.outputs[i].dtype == 0 {
            // Declared without a shape: described by what was generated.
            desc.outputs[i].dtype = val.dt.onnx_code();
            for k in 0..val.rank() {
                let name = format!("{}.{k}", desc.outputs[i].name);
                desc.symbols.push(lpc_rt::desc::SymbolDesc {
                    name,
                    max: u64::MAX,
                });
                let sym = DimDesc::Sym(desc.symbols.len() as u32 - 1);
                desc.outputs[i].dims.push(sym);
            }
        }
        let want = &desc.outputs[i];
        if val.rank() != want.dims.len() {
            return cg.err(format!(
                "output `{}` has rank {}, declared {}",
                want.name,
                val.rank(),
                want.dims.len()
            ));
        }
        let root = root_of.get(&v).copied();
        let own = root.filter(|&r| roots[r].ptr == val.ptr && !handed.contains(&r));
        let data = match own {
            Some(r) => {
                handed.push(r);
                val.ptr
            }
            None => {
                let n = cg.product(&val.dims)?;
                let dst = cg.alloc(val.dt, n)?;
                let bytes = cg.mul(n, cg.c64(val.dt.size() as i64))?;
                cg.b.build_memcpy(dst, 1, val.ptr, 1, bytes)?;
                dst
            }
        };
        let dtp = field(&cg, outptr, i, 0)?;
        cg.b.build_store(dtp, i32t.const_int(val.dt.onnx_code() as u64, true))?;
        let rp = field(&cg, outptr, i, 1)?;
        cg.b.build_store(rp, i32t.const_int(val.rank() as u64, false))?;
        let dp = field(&cg, outptr, i, 2)?;
        for k in 0..lpc_rt::MAX_RANK {
            let d = val.dims.get(k).copied().unwrap_or(cg.c64(0));
            cg.store(lpc_ir::DType::I64, dp, cg.c64(k as i64), d.into())?;
        }
        let pp = field(&cg, outptr, i, 3)?;
        cg.b.build_store(pp, data)?;
    }
    for (r, root) in roots.iter().enumerate() {
        if root.pending > 0 && !handed.contains(&r) {
            cg.release(root.ptr)?;
        }
    }
    cg.b.build_return(Some(&i32t.const_int(0, false)))?;

    // The descriptor, the embedded weights and the exported loader.
    let bytes = desc.encode();
    let arr = cx.const_string(&bytes, false);
    let dg = cg.m.add_global(arr.get_type(), None, "lpc.descriptor");
    dg.set_initializer(&arr);
    dg.set_constant(true);
    dg.set_linkage(Linkage::Private);
    let embedded: BasicValueEnum<'c> = if o.embed_weights {
        let mut data = vec![0u8; w.len as usize];
        w.for_each_piece(g, |off, piece| -> Result<(), std::convert::Infallible> {
            data[off as usize..off as usize + piece.len()].copy_from_slice(piece);
            Ok(())
        })
        .unwrap_or_else(|e| match e {});
        let arr = cx.const_string(&data, false);
        let wg = cg.m.add_global(arr.get_type(), None, "lpc.weights");
        wg.set_initializer(&arr);
        wg.set_constant(true);
        wg.set_linkage(Linkage::Private);
        wg.set_alignment(64);
        wg.as_pointer_value().into()
    } else {
        p.const_null().into()
    };
    if let Some(d) = &o.device {
        let args = [
            dg.as_pointer_value().into(),
            i64t.const_int(bytes.len() as u64, false).into(),
            graph_fn.as_global_value().as_pointer_value().into(),
            embedded,
        ];
        let code = device::finish(&mut cg, d, &args)?;
        return Ok((cg.m, Some(code)));
    }
    let load = cg.m.add_function(
        "lpc_model_load",
        p.fn_type(&[p.into(), p.into()], false),
        Some(Linkage::External),
    );
    let rt_load = cg.m.add_function(
        "lpc_rt_load",
        p.fn_type(
            &[
                p.into(),
                i64t.into(),
                p.into(),
                p.into(),
                p.into(),
                p.into(),
            ],
            false,
        ),
        Some(Linkage::External),
    );
    let bb = cx.append_basic_block(load, "entry");
    cg.b.position_at_end(bb);
    let h = cg.call_value(
        rt_load,
        &[
            dg.as_pointer_value().into(),
            i64t.const_int(bytes.len() as u64, false).into(),
            graph_fn.as_global_value().as_pointer_value().into(),
            embedded.into(),
            load.get_nth_param(0).expect("path").into(),
            load.get_nth_param(1).expect("opts").into(),
        ],
    )?;
    cg.b.build_return(Some(&h))?;
    Ok((cg.m, None))
}

/// Generates one node; returns its results in order.
fn emit<'c>(cg: &mut Cg<'c>, g: &Graph, n: &Node, ins: &[Option<Val<'c>>]) -> R<Vec<Val<'c>>> {
    let cst = |k: usize| -> Option<Vec<i64>> {
        let v = n.inputs.get(k).copied().flatten()?;
        match &g.value(v).def {
            Def::Const(t) => t.to_i64_vec(),
            _ => None,
        }
    };
    let op = n.op.as_str();
    if cg.dev.is_some() {
        if let Some(r) = device::emit(cg, n, ins)? {
            let st = cg.dev.as_mut().expect("device");
            *st.on_device.entry(n.op.clone()).or_default() += 1;
            return Ok(r);
        }
        let st = cg.dev.as_mut().expect("device");
        *st.on_host.entry(n.op.clone()).or_default() += 1;
        // Host code on buffers kernels may still be writing (or reading:
        // the pool recycles buffers). Views touch no data.
        if !matches!(
            op,
            "Reshape" | "Squeeze" | "Unsqueeze" | "Flatten" | "Identity"
        ) {
            device::host_op(cg)?;
        }
    }
    if let Some(r) = elementwise::emit(cg, n, ins)? {
        return Ok(r);
    }
    if let Some(r) = shape::emit(cg, n, ins, &cst)? {
        return Ok(r);
    }
    let opset = g.opsets.get("").copied().unwrap_or(17);
    if let Some(r) = nn::emit(cg, n, ins, opset)? {
        return Ok(r);
    }
    if let Some(r) = linalg::emit(cg, n, ins)? {
        return Ok(r);
    }
    cg.err(format!("op {op} is not supported by code generation yet"))
}

/// Operand `k` (required).
pub(crate) fn arg<'a, 'c>(cg: &Cg<'c>, ins: &'a [Option<Val<'c>>], k: usize) -> R<&'a Val<'c>> {
    match ins.get(k) {
        Some(Some(v)) => Ok(v),
        _ => cg.err(format!("operand {k} is required")),
    }
}
