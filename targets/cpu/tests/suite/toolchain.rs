//! The LLVM tool chain end to end: IR built with inkwell, optimized for the
//! host, emitted as an object, linked into a shared library, loaded and run.

use inkwell::context::Context;
use inkwell::OptimizationLevel;
use lpc_target_cpu::{emit_asm, emit_object, link_shared, optimize, CpuTarget};

/// `float lpc_sum(const float *x, long n)`: a reduction loop LLVM vectorizes.
fn build_sum(ctx: &Context) -> inkwell::module::Module<'_> {
    let m = ctx.create_module("sum");
    let (f32t, i64t) = (ctx.f32_type(), ctx.i64_type());
    let ptr = ctx.ptr_type(inkwell::AddressSpace::default());
    let f = m.add_function(
        "lpc_sum",
        f32t.fn_type(&[ptr.into(), i64t.into()], false),
        None,
    );
    let b = ctx.create_builder();
    let (entry, body, exit) = (
        ctx.append_basic_block(f, "entry"),
        ctx.append_basic_block(f, "body"),
        ctx.append_basic_block(f, "exit"),
    );
    let x = f.get_nth_param(0).unwrap().into_pointer_value();
    let n = f.get_nth_param(1).unwrap().into_int_value();
    b.position_at_end(entry);
    let nonempty = b
        .build_int_compare(inkwell::IntPredicate::SGT, n, i64t.const_zero(), "ne")
        .unwrap();
    b.build_conditional_branch(nonempty, body, exit).unwrap();
    b.position_at_end(body);
    let i = b.build_phi(i64t, "i").unwrap();
    let acc = b.build_phi(f32t, "acc").unwrap();
    let p = unsafe {
        b.build_gep(f32t, x, &[i.as_basic_value().into_int_value()], "p")
            .unwrap()
    };
    let v = b.build_load(f32t, p, "v").unwrap().into_float_value();
    let acc2 = b
        .build_float_add(acc.as_basic_value().into_float_value(), v, "acc2")
        .unwrap();
    let i2 = b
        .build_int_add(
            i.as_basic_value().into_int_value(),
            i64t.const_int(1, false),
            "i2",
        )
        .unwrap();
    i.add_incoming(&[(&i64t.const_zero(), entry), (&i2, body)]);
    acc.add_incoming(&[(&f32t.const_zero(), entry), (&acc2, body)]);
    let more = b
        .build_int_compare(inkwell::IntPredicate::SLT, i2, n, "more")
        .unwrap();
    b.build_conditional_branch(more, body, exit).unwrap();
    b.position_at_end(exit);
    let r = b.build_phi(f32t, "r").unwrap();
    r.add_incoming(&[(&f32t.const_zero(), entry), (&acc2, body)]);
    b.build_return(Some(&r.as_basic_value())).unwrap();
    m
}

#[test]
fn host_target_is_detected() {
    let t = CpuTarget::host().unwrap();
    assert!(
        t.triple.starts_with("x86_64") || t.triple.starts_with("aarch64"),
        "{t:?}"
    );
    assert!(!t.cpu.is_empty());
}

#[test]
fn ir_to_shared_library_runs() {
    let ctx = Context::create();
    let m = build_sum(&ctx);
    let target = CpuTarget::host().unwrap();
    let tm = target.machine(OptimizationLevel::Default).unwrap();
    optimize(&m, &tm, OptimizationLevel::Default).unwrap();
    assert!(emit_asm(&m, &tm).unwrap().contains("lpc_sum"));

    let dir = tempfile::tempdir().unwrap();
    let (obj, so) = (dir.path().join("sum.o"), dir.path().join("libsum.so"));
    emit_object(&m, &tm, &obj).unwrap();
    link_shared(&[&obj], &[], &so).unwrap();
    let x: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5).collect();
    // SAFETY: the library was just built from the IR above with this signature.
    let got = unsafe {
        let lib = libloading::Library::new(&so).unwrap();
        let f: libloading::Symbol<unsafe extern "C" fn(*const f32, i64) -> f32> =
            lib.get(b"lpc_sum").unwrap();
        f(x.as_ptr(), x.len() as i64)
    };
    // In-order f32 summation: no fast-math reassociation was allowed.
    let want = x.iter().fold(0f32, |a, &v| a + v);
    assert_eq!(got.to_bits(), want.to_bits());
}

#[test]
fn link_errors_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("missing.o");
    let err = link_shared(&[&bad], &[], &dir.path().join("x.so")).unwrap_err();
    assert!(err.to_string().contains("x.so"), "{err}");
}
