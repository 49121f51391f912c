//! The code generator's building blocks: the per-function state, typed
//! loads and stores, loops, run-time checks, allocation through the runtime,
//! and outlined parallel loops.

use inkwell::basic_block::BasicBlock;
use inkwell::builder::{Builder, BuilderError};
use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic;
use inkwell::module::{Linkage, Module};
use inkwell::types::{BasicMetadataTypeEnum, BasicTypeEnum, FloatType, IntType, PointerType};
use inkwell::values::{
    BasicMetadataValueEnum, BasicValueEnum, FloatValue, FunctionValue, IntValue, PointerValue,
};
use inkwell::{AddressSpace, FloatPredicate, IntPredicate};
use lpc_ir::DType;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CgError {
    #[error("node `{node}` ({op}): {msg}")]
    Node {
        node: String,
        op: String,
        msg: String,
    },
    #[error("{0}")]
    Graph(String),
    #[error("LLVM builder: {0}")]
    Builder(#[from] BuilderError),
}

pub type R<T> = Result<T, CgError>;

/// A tensor while generating code: its data pointer, its dimensions (i64
/// values, constants where known at compile time) and element type.
#[derive(Clone, Debug)]
pub struct Val<'c> {
    pub ptr: PointerValue<'c>,
    pub dims: Vec<IntValue<'c>>,
    pub dt: DType,
}

impl<'c> Val<'c> {
    pub fn rank(&self) -> usize {
        self.dims.len()
    }
}

/// Per-function generation state over one module.
pub struct Cg<'c> {
    pub cx: &'c Context,
    pub m: Module<'c>,
    pub b: Builder<'c>,
    /// The function being generated, its runtime context pointer and the
    /// block that returns failure.
    pub f: FunctionValue<'c>,
    pub ctx: PointerValue<'c>,
    pub fail: Option<BasicBlock<'c>>,
    /// Code paths the target allows (see `Options`).
    pub vnni512: bool,
    pub bf16_512: bool,
    pub pace_strips: bool,
    /// `qgemm` weights stored in the CPU layout (see `layout.rs`).
    pub cpu_layout: std::collections::HashSet<lpc_ir::ValueId>,
    /// Set for `--target cuda`: the kernels launched so far.
    pub dev: Option<super::device::DevState>,
    /// The node being generated, for messages.
    pub node: String,
    pub op: String,
    pub(crate) counter: usize,
}

impl std::fmt::Debug for Cg<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cg").field("node", &self.node).finish()
    }
}

impl<'c> Cg<'c> {
    pub fn i64t(&self) -> IntType<'c> {
        self.cx.i64_type()
    }
    pub fn i32t(&self) -> IntType<'c> {
        self.cx.i32_type()
    }
    pub fn i8t(&self) -> IntType<'c> {
        self.cx.i8_type()
    }
    pub fn f32t(&self) -> FloatType<'c> {
        self.cx.f32_type()
    }
    pub fn f64t(&self) -> FloatType<'c> {
        self.cx.f64_type()
    }
    pub fn ptrt(&self) -> PointerType<'c> {
        self.cx.ptr_type(AddressSpace::default())
    }
    pub fn c64(&self, v: i64) -> IntValue<'c> {
        self.i64t().const_int(v as u64, true)
    }
    pub fn cf32(&self, v: f32) -> FloatValue<'c> {
        self.f32t().const_float(v as f64)
    }
    pub fn cf64(&self, v: f64) -> FloatValue<'c> {
        self.f64t().const_float(v)
    }

    /// An error against the current node.
    pub fn err<T>(&self, msg: impl Into<String>) -> R<T> {
        Err(CgError::Node {
            node: self.node.clone(),
            op: self.op.clone(),
            msg: msg.into(),
        })
    }

    /// A fresh name for an outlined function or global.
    pub fn fresh(&mut self, what: &str) -> String {
        self.counter += 1;
        format!("lpc.{what}.{}", self.counter)
    }

    /// The in-memory type of an element type's scalars.
    pub fn ty(&self, dt: DType) -> R<BasicTypeEnum<'c>> {
        Ok(match dt {
            DType::F32 => self.f32t().into(),
            DType::F64 => self.f64t().into(),
            DType::F16 => self.cx.f16_type().into(),
            DType::Bf16 => self.cx.bf16_type().into(),
            DType::I64 => self.i64t().into(),
            DType::I32 => self.i32t().into(),
            DType::I8 | DType::U8 | DType::Bool => self.i8t().into(),
            other => {
                return self.err(format!(
                    "element type {other} is not supported by code generation yet"
                ))
            }
        })
    }

    pub fn gep(&self, dt: DType, p: PointerValue<'c>, i: IntValue<'c>) -> R<PointerValue<'c>> {
        let t = self.ty(dt)?;
        // SAFETY: offsets are computed from the tensor's own dimensions.
        Ok(unsafe { self.b.build_in_bounds_gep(t, p, &[i], "")? })
    }
    pub fn gep_bytes(&self, p: PointerValue<'c>, i: IntValue<'c>) -> R<PointerValue<'c>> {
        // SAFETY: as above.
        Ok(unsafe { self.b.build_in_bounds_gep(self.i8t(), p, &[i], "")? })
    }
    /// `p + i` bytes for an address that may lie past the object (a
    /// prefetch ahead): a plain GEP, where an in-bounds one would be poison.
    pub fn gep_bytes_ahead(&self, p: PointerValue<'c>, i: IntValue<'c>) -> R<PointerValue<'c>> {
        // SAFETY: the address is only prefetched, never dereferenced.
        Ok(unsafe { self.b.build_gep(self.i8t(), p, &[i], "")? })
    }
    pub fn load(&self, dt: DType, p: PointerValue<'c>, i: IntValue<'c>) -> R<BasicValueEnum<'c>> {
        let q = self.gep(dt, p, i)?;
        Ok(self.b.build_load(self.ty(dt)?, q, "")?)
    }
    pub fn store(
        &self,
        dt: DType,
        p: PointerValue<'c>,
        i: IntValue<'c>,
        v: BasicValueEnum<'c>,
    ) -> R<()> {
        let q = self.gep(dt, p, i)?;
        self.b.build_store(q, v)?;
        Ok(())
    }
    pub fn load_f32(&self, p: PointerValue<'c>, i: IntValue<'c>) -> R<FloatValue<'c>> {
        Ok(self.load(DType::F32, p, i)?.into_float_value())
    }
    pub fn load_i64(&self, p: PointerValue<'c>, i: IntValue<'c>) -> R<IntValue<'c>> {
        Ok(self.load(DType::I64, p, i)?.into_int_value())
    }
    pub fn load_u8(&self, p: PointerValue<'c>, i: IntValue<'c>) -> R<IntValue<'c>> {
        let q = self.gep_bytes(p, i)?;
        Ok(self.b.build_load(self.i8t(), q, "")?.into_int_value())
    }

    // ---- integer arithmetic on i64 ----
    pub fn add(&self, a: IntValue<'c>, b: IntValue<'c>) -> R<IntValue<'c>> {
        Ok(self.b.build_int_add(a, b, "")?)
    }
    pub fn sub(&self, a: IntValue<'c>, b: IntValue<'c>) -> R<IntValue<'c>> {
        Ok(self.b.build_int_sub(a, b, "")?)
    }
    pub fn mul(&self, a: IntValue<'c>, b: IntValue<'c>) -> R<IntValue<'c>> {
        Ok(self.b.build_int_mul(a, b, "")?)
    }
    pub fn sdiv(&self, a: IntValue<'c>, b: IntValue<'c>) -> R<IntValue<'c>> {
        Ok(self.b.build_int_signed_div(a, b, "")?)
    }
    pub fn srem(&self, a: IntValue<'c>, b: IntValue<'c>) -> R<IntValue<'c>> {
        Ok(self.b.build_int_signed_rem(a, b, "")?)
    }
    pub fn icmp(&self, p: IntPredicate, a: IntValue<'c>, b: IntValue<'c>) -> R<IntValue<'c>> {
        Ok(self.b.build_int_compare(p, a, b, "")?)
    }
    pub fn fcmp(&self, p: FloatPredicate, a: FloatValue<'c>, b: FloatValue<'c>) -> R<IntValue<'c>> {
        Ok(self.b.build_float_compare(p, a, b, "")?)
    }
    pub fn select_i(&self, c: IntValue<'c>, a: IntValue<'c>, b: IntValue<'c>) -> R<IntValue<'c>> {
        Ok(self.b.build_select(c, a, b, "")?.into_int_value())
    }
    pub fn select_f(
        &self,
        c: IntValue<'c>,
        a: FloatValue<'c>,
        b: FloatValue<'c>,
    ) -> R<FloatValue<'c>> {
        Ok(self.b.build_select(c, a, b, "")?.into_float_value())
    }
    pub fn smax(&self, a: IntValue<'c>, b: IntValue<'c>) -> R<IntValue<'c>> {
        let c = self.icmp(IntPredicate::SGT, a, b)?;
        self.select_i(c, a, b)
    }
    pub fn smin(&self, a: IntValue<'c>, b: IntValue<'c>) -> R<IntValue<'c>> {
        let c = self.icmp(IntPredicate::SLT, a, b)?;
        self.select_i(c, a, b)
    }
    pub fn and(&self, a: IntValue<'c>, b: IntValue<'c>) -> R<IntValue<'c>> {
        Ok(self.b.build_and(a, b, "")?)
    }
    /// The product of dimensions (1 for none).
    pub fn product(&self, d: &[IntValue<'c>]) -> R<IntValue<'c>> {
        let mut p = self.c64(1);
        for &x in d {
            p = self.mul(p, x)?;
        }
        Ok(p)
    }
    /// Row-major strides of `dims`.
    pub fn strides(&self, dims: &[IntValue<'c>]) -> R<Vec<IntValue<'c>>> {
        let mut s = vec![self.c64(1); dims.len()];
        for k in (0..dims.len().saturating_sub(1)).rev() {
            s[k] = self.mul(s[k + 1], dims[k + 1])?;
        }
        Ok(s)
    }
    /// A dimension's value if it is a compile-time constant.
    pub fn known(v: IntValue<'c>) -> Option<i64> {
        v.get_sign_extended_constant()
    }

    // ---- float helpers ----
    pub fn fadd(&self, a: FloatValue<'c>, b: FloatValue<'c>) -> R<FloatValue<'c>> {
        Ok(self.b.build_float_add(a, b, "")?)
    }
    pub fn fsub(&self, a: FloatValue<'c>, b: FloatValue<'c>) -> R<FloatValue<'c>> {
        Ok(self.b.build_float_sub(a, b, "")?)
    }
    pub fn fmul(&self, a: FloatValue<'c>, b: FloatValue<'c>) -> R<FloatValue<'c>> {
        Ok(self.b.build_float_mul(a, b, "")?)
    }
    pub fn fdiv(&self, a: FloatValue<'c>, b: FloatValue<'c>) -> R<FloatValue<'c>> {
        Ok(self.b.build_float_div(a, b, "")?)
    }
    pub fn fext(&self, a: FloatValue<'c>) -> R<FloatValue<'c>> {
        Ok(self.b.build_float_ext(a, self.f64t(), "")?)
    }
    pub fn ftrunc(&self, a: FloatValue<'c>) -> R<FloatValue<'c>> {
        Ok(self.b.build_float_trunc(a, self.f32t(), "")?)
    }
    pub fn si_to_f64(&self, a: IntValue<'c>) -> R<FloatValue<'c>> {
        Ok(self.b.build_signed_int_to_float(a, self.f64t(), "")?)
    }

    /// Calls an LLVM intrinsic overloaded on the given types.
    pub fn intrinsic(
        &self,
        name: &str,
        tys: &[BasicTypeEnum<'c>],
        args: &[BasicMetadataValueEnum<'c>],
    ) -> R<BasicValueEnum<'c>> {
        let f = Intrinsic::find(name)
            .and_then(|i| i.get_declaration(&self.m, tys))
            .ok_or_else(|| CgError::Graph(format!("LLVM has no intrinsic {name}")))?;
        self.call_value(f, args)
    }
    /// A unary f32 math function: an intrinsic where LLVM has one, else libm.
    pub fn math_f32(&self, name: &str, x: FloatValue<'c>) -> R<FloatValue<'c>> {
        let intr = format!("llvm.{name}");
        if Intrinsic::find(&intr).is_some() {
            return Ok(self
                .intrinsic(&intr, &[self.f32t().into()], &[x.into()])?
                .into_float_value());
        }
        let f = self.libm(&format!("{name}f"), 1)?;
        Ok(self.call_value(f, &[x.into()])?.into_float_value())
    }
    /// A libm function of `n` f32 arguments.
    pub fn libm(&self, name: &str, n: usize) -> R<FunctionValue<'c>> {
        if let Some(f) = self.m.get_function(name) {
            return Ok(f);
        }
        let args: Vec<_> = (0..n).map(|_| self.f32t().into()).collect();
        Ok(self.m.add_function(
            name,
            self.f32t().fn_type(&args, false),
            Some(Linkage::External),
        ))
    }
    pub fn call_value(
        &self,
        f: FunctionValue<'c>,
        args: &[BasicMetadataValueEnum<'c>],
    ) -> R<BasicValueEnum<'c>> {
        self.b
            .build_call(f, args, "")?
            .try_as_basic_value()
            .basic()
            .ok_or_else(|| CgError::Graph("call returns no value".into()))
    }
    pub fn call_void(&self, f: FunctionValue<'c>, args: &[BasicMetadataValueEnum<'c>]) -> R<()> {
        self.b.build_call(f, args, "")?;
        Ok(())
    }

    /// The x86 `pause` instruction (a spin-wait hint: the core dispatches
    /// nothing for a while), as inline assembly.
    pub fn pause(&self) -> R<()> {
        let ft = self.cx.void_type().fn_type(&[], false);
        let asm =
            self.cx
                .create_inline_asm(ft, "pause".into(), String::new(), true, false, None, false);
        self.b.build_indirect_call(ft, asm, &[], "")?;
        Ok(())
    }

    /// A read prefetch of the cache line at `p`: into L1 (`l1`) or into L2
    /// only (for lines needed later than L1 would keep them).
    pub fn prefetch(&self, p: PointerValue<'c>, l1: bool) -> R<()> {
        let f = Intrinsic::find("llvm.prefetch")
            .and_then(|i| i.get_declaration(&self.m, &[self.ptrt().into()]))
            .ok_or_else(|| CgError::Graph("LLVM has no intrinsic llvm.prefetch".into()))?;
        let i32c = |v: u64| self.i32t().const_int(v, false);
        let locality = if l1 { 3 } else { 2 };
        self.call_void(
            f,
            &[
                p.into(),
                i32c(0).into(),
                i32c(locality).into(),
                i32c(1).into(),
            ],
        )
    }

    /// A runtime service function, declared on first use.
    pub fn rt(&self, name: &str) -> FunctionValue<'c> {
        if let Some(f) = self.m.get_function(name) {
            return f;
        }
        let (p, i64t, i32t) = (self.ptrt(), self.i64t(), self.i32t());
        let void = self.cx.void_type();
        let ty = match name {
            "lpc_rt_alloc" => p.fn_type(&[p.into(), i64t.into()], false),
            "lpc_rt_release" => void.fn_type(&[p.into(), p.into()], false),
            "lpc_rt_launch" => i32t.fn_type(&[p.into(), i32t.into(), i64t.into(), p.into()], false),
            "lpc_rt_host" => i32t.fn_type(&[p.into()], false),
            "lpc_rt_error" => void.fn_type(&[p.into(), p.into(), p.into()], false),
            "lpc_rt_profile" => void.fn_type(&[p.into(), i64t.into(), p.into()], false),
            "lpc_rt_parallel_for" => void.fn_type(
                &[p.into(), i64t.into(), i64t.into(), p.into(), p.into()],
                false,
            ),
            // Both quantizers start (format, mode, x, rows, k, rotate).
            "lpc_rt_quantize_rows" | "lpc_rt_quantize_codes" => {
                let mut args: Vec<BasicMetadataTypeEnum> = vec![
                    i32t.into(),
                    i32t.into(),
                    p.into(),
                    i64t.into(),
                    i64t.into(),
                    i64t.into(),
                ];
                if name == "lpc_rt_quantize_rows" {
                    // pow2, out, exps
                    args.extend::<[BasicMetadataTypeEnum; 3]>([i32t.into(), p.into(), p.into()]);
                    void.fn_type(&args, false)
                } else {
                    // codes, stride, factors
                    args.extend::<[BasicMetadataTypeEnum; 3]>([p.into(), i64t.into(), p.into()]);
                    i32t.fn_type(&args, false)
                }
            }
            "lpc_rt_scratch" => p.fn_type(&[i32t.into(), i64t.into()], false),
            other => panic!("unknown runtime function {other}"),
        };
        let f = self.m.add_function(name, ty, Some(Linkage::External));
        if name == "lpc_rt_alloc" {
            // A fresh buffer, as from malloc: nothing else points into it
            // (a recycled one's previous uses all precede its release, an
            // opaque call), which LLVM's alias analysis can then use.
            let k = inkwell::attributes::Attribute::get_named_enum_kind_id("noalias");
            let a = self.cx.create_enum_attribute(k, 0);
            f.add_attribute(inkwell::attributes::AttributeLoc::Return, a);
        }
        f
    }

    /// A private constant NUL-terminated string.
    pub fn cstr(&mut self, s: &str) -> PointerValue<'c> {
        let bytes = s.replace('\0', " ");
        let arr = self.cx.const_string(bytes.as_bytes(), true);
        let name = self.fresh("str");
        let g = self.m.add_global(arr.get_type(), None, &name);
        g.set_initializer(&arr);
        g.set_constant(true);
        g.set_linkage(Linkage::Private);
        g.as_pointer_value()
    }

    /// Emits `if !ok { lpc_rt_error(node, msg); return 1 }`.
    pub fn check(&mut self, ok: IntValue<'c>, msg: &str) -> R<()> {
        if ok.get_zero_extended_constant() == Some(1) {
            return Ok(());
        }
        let Some(fail) = self.fail else {
            return Err(CgError::Graph(
                "run-time check inside a parallel body".into(),
            ));
        };
        let bad = self.cx.append_basic_block(self.f, "check.fail");
        let good = self.cx.append_basic_block(self.f, "check.ok");
        self.b.build_conditional_branch(ok, good, bad)?;
        self.b.position_at_end(bad);
        let node = self.cstr(&format!("{} ({})", self.node, self.op));
        let m = self.cstr(msg);
        self.call_void(
            self.rt("lpc_rt_error"),
            &[self.ctx.into(), node.into(), m.into()],
        )?;
        self.b.build_unconditional_branch(fail)?;
        self.b.position_at_end(good);
        Ok(())
    }

    /// Allocates `n` elements of `dt` from the runtime (checked).
    pub fn alloc(&mut self, dt: DType, n: IntValue<'c>) -> R<PointerValue<'c>> {
        let bytes = self.mul(n, self.c64(dt.size() as i64))?;
        let p = self
            .call_value(self.rt("lpc_rt_alloc"), &[self.ctx.into(), bytes.into()])?
            .into_pointer_value();
        let ok = self.b.build_is_not_null(p, "")?;
        self.check(ok, "out of memory")?;
        Ok(p)
    }
    pub fn release(&self, p: PointerValue<'c>) -> R<()> {
        self.call_void(self.rt("lpc_rt_release"), &[self.ctx.into(), p.into()])
    }

    /// Several scratch buffers of one op from a single runtime allocation
    /// (one `lpc_rt_alloc` and one release instead of one each): `sizes`
    /// are element counts, each buffer starts 64-byte aligned. Returns the
    /// allocation (to [`Self::release`]) and the buffers' pointers.
    pub fn alloc_scratch(
        &mut self,
        sizes: &[(DType, IntValue<'c>)],
    ) -> R<(PointerValue<'c>, Vec<PointerValue<'c>>)> {
        let mut offs = Vec::with_capacity(sizes.len());
        let mut total = self.c64(0);
        for &(dt, n) in sizes {
            offs.push(total);
            let bytes = self.mul(n, self.c64(dt.size() as i64))?;
            let padded = self.mul(
                self.sdiv(self.add(bytes, self.c64(63))?, self.c64(64))?,
                self.c64(64),
            )?;
            total = self.add(total, padded)?;
        }
        let base = self.alloc(DType::U8, self.smax(total, self.c64(64))?)?;
        let ptrs = offs
            .into_iter()
            .map(|o| self.gep_bytes(base, o))
            .collect::<R<Vec<_>>>()?;
        Ok((base, ptrs))
    }

    /// A stack slot in the function's entry block.
    pub fn entry_alloca(&self, t: BasicTypeEnum<'c>, n: u32) -> R<PointerValue<'c>> {
        let cur = self.b.get_insert_block();
        let entry = self
            .f
            .get_first_basic_block()
            .ok_or_else(|| CgError::Graph("function without entry".into()))?;
        match entry.get_first_instruction() {
            Some(i) => self.b.position_before(&i),
            None => self.b.position_at_end(entry),
        }
        let p = self
            .b
            .build_array_alloca(t, self.i32t().const_int(n as u64, false), "")?;
        if let Some(c) = cur {
            self.b.position_at_end(c);
        }
        Ok(p)
    }

    /// `if cond { body }`.
    pub fn if_then(&mut self, cond: IntValue<'c>, body: impl FnOnce(&mut Self) -> R<()>) -> R<()> {
        if cond.get_zero_extended_constant() == Some(1) {
            return body(self);
        }
        self.if_else(cond, body, |_| Ok(()))
    }

    /// `if cond { then } else { other }`.
    pub fn if_else(
        &mut self,
        cond: IntValue<'c>,
        then: impl FnOnce(&mut Self) -> R<()>,
        other: impl FnOnce(&mut Self) -> R<()>,
    ) -> R<()> {
        let (t, e) = (
            self.cx.append_basic_block(self.f, "then"),
            self.cx.append_basic_block(self.f, "else"),
        );
        let cont = self.cx.append_basic_block(self.f, "endif");
        self.b.build_conditional_branch(cond, t, e)?;
        self.b.position_at_end(t);
        then(self)?;
        self.b.build_unconditional_branch(cont)?;
        self.b.position_at_end(e);
        other(self)?;
        self.b.build_unconditional_branch(cont)?;
        self.b.position_at_end(cont);
        Ok(())
    }

    /// `for i in lo..hi { body(i) }`.
    pub fn for_range(
        &mut self,
        lo: IntValue<'c>,
        hi: IntValue<'c>,
        body: impl FnOnce(&mut Self, IntValue<'c>) -> R<()>,
    ) -> R<()> {
        self.for_range_with(lo, hi, LoopHint::None, body)
    }

    /// [`Self::for_range`] with a hint for LLVM's loop passes.
    pub fn for_range_with(
        &mut self,
        lo: IntValue<'c>,
        hi: IntValue<'c>,
        hint: LoopHint,
        body: impl FnOnce(&mut Self, IntValue<'c>) -> R<()>,
    ) -> R<()> {
        let pre = self.b.get_insert_block().expect("positioned");
        let head = self.cx.append_basic_block(self.f, "loop");
        let bodyb = self.cx.append_basic_block(self.f, "body");
        let exit = self.cx.append_basic_block(self.f, "exit");
        self.b.build_unconditional_branch(head)?;
        self.b.position_at_end(head);
        let phi = self.b.build_phi(self.i64t(), "i")?;
        let i = phi.as_basic_value().into_int_value();
        let c = self.icmp(IntPredicate::SLT, i, hi)?;
        self.b.build_conditional_branch(c, bodyb, exit)?;
        self.b.position_at_end(bodyb);
        body(self, i)?;
        let next = self.b.build_int_nsw_add(i, self.c64(1), "")?;
        let latch = self.b.get_insert_block().expect("positioned");
        let br = self.b.build_unconditional_branch(head)?;
        match hint {
            LoopHint::None => {}
            LoopHint::NoVectorize => self.loop_hint(br, "llvm.loop.vectorize.enable", Some(false)),
            LoopHint::NoUnroll => self.loop_hint(br, "llvm.loop.unroll.disable", None),
        }
        phi.add_incoming(&[(&lo, pre), (&next, latch)]);
        self.b.position_at_end(exit);
        Ok(())
    }

    /// Tags the loop whose latch branch is `br` with `llvm.loop` metadata
    /// `{self, {key, flag?}}` (a loop ID must name itself: made through a
    /// temporary node that the node then replaces).
    fn loop_hint(&self, br: inkwell::values::InstructionValue<'c>, key: &str, flag: Option<bool>) {
        use inkwell::context::AsContextRef;
        use inkwell::llvm_sys::{core, debuginfo};
        use inkwell::values::AsValueRef;
        let kind = "llvm.loop";
        // SAFETY: every reference is from this context; the temporary node
        // has no uses left after the replacement. (It is not disposed:
        // `LLVMDisposeTemporaryMDNode` there crashed LLVM 22; it is a few
        // bytes per loop, for the compiler's lifetime.)
        unsafe {
            let cx = self.cx.as_ctx_ref();
            let tmp = debuginfo::LLVMTemporaryMDNode(cx, std::ptr::null_mut(), 0);
            let mut opt = vec![core::LLVMMDStringInContext2(
                cx,
                key.as_ptr().cast(),
                key.len(),
            )];
            if let Some(f) = flag {
                opt.push(core::LLVMValueAsMetadata(core::LLVMConstInt(
                    core::LLVMInt1TypeInContext(cx),
                    f as u64,
                    0,
                )));
            }
            let opt = core::LLVMMDNodeInContext2(cx, opt.as_mut_ptr(), opt.len());
            let mut ops = [tmp, opt];
            let id = core::LLVMMDNodeInContext2(cx, ops.as_mut_ptr(), 2);
            debuginfo::LLVMMetadataReplaceAllUsesWith(tmp, id);
            let k = core::LLVMGetMDKindIDInContext(cx, kind.as_ptr().cast(), kind.len() as u32);
            core::LLVMSetMetadata(br.as_value_ref(), k, core::LLVMMetadataAsValue(cx, id));
        }
    }

    pub fn for_n(
        &mut self,
        n: IntValue<'c>,
        body: impl FnOnce(&mut Self, IntValue<'c>) -> R<()>,
    ) -> R<()> {
        let z = self.c64(0);
        self.for_range(z, n, body)
    }

    /// Nested loops over `dims` (row-major); `body` gets the index vector.
    pub fn for_nd(
        &mut self,
        dims: &[IntValue<'c>],
        body: &mut dyn FnMut(&mut Self, &[IntValue<'c>]) -> R<()>,
    ) -> R<()> {
        self.for_nd_with(dims, false, body)
    }

    /// [`Self::for_nd`]; with `inner_only`, the innermost loop is kept (not
    /// unrolled completely) and only it may be vectorized. For elementwise
    /// nests: LLVM otherwise unrolls a short innermost loop (a row of 16)
    /// completely and vectorizes the loop around it, with gathers and
    /// scatters across rows, instead of the contiguous row.
    pub fn for_nd_with(
        &mut self,
        dims: &[IntValue<'c>],
        inner_only: bool,
        body: &mut dyn FnMut(&mut Self, &[IntValue<'c>]) -> R<()>,
    ) -> R<()> {
        fn go<'c>(
            cg: &mut Cg<'c>,
            dims: &[IntValue<'c>],
            inner_only: bool,
            idx: &mut Vec<IntValue<'c>>,
            body: &mut dyn FnMut(&mut Cg<'c>, &[IntValue<'c>]) -> R<()>,
        ) -> R<()> {
            if idx.len() == dims.len() {
                return body(cg, idx);
            }
            let d = dims[idx.len()];
            let zero = cg.c64(0);
            let hint = match (inner_only, idx.len() + 1 == dims.len()) {
                (false, _) => LoopHint::None,
                (true, true) => LoopHint::NoUnroll,
                (true, false) => LoopHint::NoVectorize,
            };
            cg.for_range_with(zero, d, hint, |cg, i| {
                idx.push(i);
                let r = go(cg, dims, inner_only, idx, body);
                idx.pop();
                r
            })
        }
        let mut idx = Vec::with_capacity(dims.len());
        go(self, dims, inner_only, &mut idx, body)
    }

    /// Accumulates with a stack slot (a loop-carried value without phis).
    pub fn slot(&self, t: BasicTypeEnum<'c>, init: BasicValueEnum<'c>) -> R<PointerValue<'c>> {
        let p = self.entry_alloca(t, 1)?;
        self.b.build_store(p, init)?;
        Ok(p)
    }

    /// Runs `body(lo, hi)` over `[0, n)` split across the runtime's threads,
    /// as many as `cost` (the estimated cycles per index) makes worth it:
    /// small loops run on the calling thread alone (`lpc_rt_parallel_for`).
    /// `caps` are the values the body uses (pointers and i64s), passed
    /// through an environment; the body gets them back in order.
    pub fn parallel_for(
        &mut self,
        n: IntValue<'c>,
        cost: IntValue<'c>,
        caps: &[BasicValueEnum<'c>],
        body: impl FnOnce(&mut Self, &[BasicValueEnum<'c>], IntValue<'c>, IntValue<'c>) -> R<()>,
    ) -> R<()> {
        // Named after the op, with internal (not private) linkage, so that
        // profilers attribute time to it.
        let name = self.fresh(&format!("par.{}", self.op.trim_start_matches("lpc.")));
        let p = self.ptrt();
        let fty = self
            .cx
            .void_type()
            .fn_type(&[p.into(), self.i64t().into(), self.i64t().into()], false);
        let func = self.m.add_function(&name, fty, Some(Linkage::Internal));
        // Environment: one 8-byte slot per capture.
        let env = self.entry_alloca(self.i64t().into(), caps.len().max(1) as u32)?;
        for (k, v) in caps.iter().enumerate() {
            let slot = self.gep(DType::I64, env, self.c64(k as i64))?;
            self.b.build_store(slot, *v)?;
        }
        let fnp = func.as_global_value().as_pointer_value();
        self.call_void(
            self.rt("lpc_rt_parallel_for"),
            &[
                self.ctx.into(),
                n.into(),
                cost.into(),
                fnp.into(),
                env.into(),
            ],
        )?;
        // The body, generated in its own function.
        let saved = (self.f, self.fail, self.b.get_insert_block());
        self.f = func;
        self.fail = None;
        let entry = self.cx.append_basic_block(func, "entry");
        self.b.position_at_end(entry);
        let envp = func.get_nth_param(0).expect("env").into_pointer_value();
        let lo = func.get_nth_param(1).expect("lo").into_int_value();
        let hi = func.get_nth_param(2).expect("hi").into_int_value();
        let mut vals = Vec::with_capacity(caps.len());
        for (k, v) in caps.iter().enumerate() {
            let slot = self.gep(DType::I64, envp, self.c64(k as i64))?;
            vals.push(self.b.build_load(v.get_type(), slot, "")?);
        }
        let r = body(self, &vals, lo, hi);
        if r.is_ok() {
            self.b.build_return(None)?;
        }
        self.f = saved.0;
        self.fail = saved.1;
        if let Some(bb) = saved.2 {
            self.b.position_at_end(bb);
        }
        r
    }
}

/// What LLVM's loop passes may do with a generated loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoopHint {
    /// Anything.
    None,
    /// Not vectorize it (the loops inside it still may be).
    NoVectorize,
    /// Not unroll it (it may still be vectorized).
    NoUnroll,
}
