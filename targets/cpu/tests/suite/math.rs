//! The generated `Exp`, `Tanh`, `Sigmoid` and SiLU (vectorized inline
//! polynomials) against the runtime's scalar reference (`lpc_runtime::math`),
//! bit for bit, on the AVX-512 host build and the AVX2 build.

use lpc_ir::{DType, Dim, Graph, NewNode, Type};
use lpc_runtime::math;
use lpc_target_cpu::bench::OpLib;
use lpc_target_cpu::CpuTarget;
use std::collections::BTreeMap;

fn unary_graph(op: &str, n: usize) -> Graph {
    let mut g = Graph::new("unary");
    let ty = Some(Type::new(DType::F32, vec![Dim::Fixed(n)]));
    let x = g.add_input("x", ty.clone());
    let (_, outs) = g.add_node(
        NewNode {
            name: "u".into(),
            op: op.into(),
            attrs: BTreeMap::new(),
            inputs: vec![Some(x)],
        },
        vec![("y".into(), ty)],
    );
    g.outputs = outs;
    g
}

#[test]
fn generated_elementary_functions_match_the_reference_bit_for_bit() {
    // Every 4099th bit pattern (all exponents, both signs, NaNs and
    // infinities), plus the edges of each function's branches and clamps.
    let mut x: Vec<f32> = (0..u32::MAX / 4099)
        .map(|i| f32::from_bits(i * 4099))
        .collect();
    x.extend([
        0.0,
        -0.0,
        math::TANH_SMALL,
        -math::TANH_SMALL,
        math::EXP_MIN,
        math::EXP_MAX,
        88.72,
        -88.72,
        -87.33,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        std::f32::consts::FRAC_PI_4,
        std::f32::consts::PI,
        -std::f32::consts::FRAC_PI_2,
        math::TRIG_ACCURATE_BELOW,
        9.007_199e15,
    ]);
    let n = x.len();
    let dir = tempfile::tempdir().unwrap();
    let mut haswell = CpuTarget::host().unwrap();
    haswell.cpu = "haswell".into();
    haswell.features = String::new();
    type Reference = fn(f32) -> f32;
    let refs: [(&str, Reference); 6] = [
        ("Exp", math::exp_f32),
        ("Tanh", math::tanh_f32),
        ("Sigmoid", math::sigmoid_f32),
        ("lpc.silu", math::silu_f32),
        ("Sin", math::sin_f32),
        ("Cos", math::cos_f32),
    ];
    for (ti, target) in [CpuTarget::host().unwrap(), haswell]
        .into_iter()
        .enumerate()
    {
        for (op, f) in refs {
            let name = format!("{}_{ti}", op.replace('.', "_"));
            let lib =
                OpLib::build(&unary_graph(op, n), target.clone(), dir.path(), &name, 1).unwrap();
            let got = lib.run(&[(&x, &[n])]).unwrap();
            let bad: Vec<String> = x
                .iter()
                .zip(&got)
                .filter(|(&v, &g)| {
                    let w = f(v);
                    !(g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()))
                })
                .take(5)
                .map(|(&v, &g)| format!("{op}({v:e}) = {g:e}, reference {:e}", f(v)))
                .collect();
            assert!(bad.is_empty(), "{} {}", target.cpu, bad.join("; "));
        }
    }
}
