//! `lpc.linear` in f32: one output element per work item, the products
//! summed in K order in f32 as the interpreter does (the device may contract
//! them into fused multiply-adds), then the bias. The bf16 layers
//! (`lpc.linear {bf16 = 1}`) round x to bf16 and read bf16 weights in
//! pairs along K; their products are exact in f32, summed in the same order.

use crate::kernel::{Kernel, Param};
use crate::mlir::{Ty, B};

/// How a [`linear`] kernel's weights are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinearWeights {
    /// f32 `[k, n_i]`.
    F32,
    /// f32 `[n_i, k]`.
    F32Transposed,
    /// bf16 pairs along K, `[ceil(k/2), n_i, 2]`; x rounded to bf16.
    Bf16Pairs,
}

/// Params: `y` (`[rows, n]`), `x` (`[rows, k]`), `w0..` (see
/// [`LinearWeights`]), [`bias` (`[n]`)], `k`, `n`, `n0..`.
/// Item = row·n + j.
pub fn linear(name: &str, parts: usize, weights: LinearWeights, bias: bool) -> Kernel {
    let f = Ty::F32;
    let x = Ty::Index;
    let transposed = weights == LinearWeights::F32Transposed;
    let bf16 = weights == LinearWeights::Bf16Pairs;
    let mut params = vec![
        ("y".to_string(), Param::Buf(f)),
        ("x".to_string(), Param::Buf(f)),
    ];
    for p in 0..parts {
        params.push((format!("w{p}"), Param::Buf(if bf16 { Ty::BF16 } else { f })));
    }
    if bias {
        params.push(("bias".to_string(), Param::Buf(f)));
    }
    params.push(("k".to_string(), Param::Index));
    params.push(("n".to_string(), Param::Index));
    for p in 0..parts {
        params.push((format!("n{p}"), Param::Index));
    }
    let mut b = B::new();
    let row = b.bin("divui", "%i", "%n", x);
    let col = b.bin("remui", "%i", "%n", x);
    let c0 = b.index(0);
    let c1 = b.index(1);
    let xrow = b.bin("muli", &row, "%k", x);
    let zero = b.f32(0.0);
    let mut acc = zero.clone();
    let mut start = c0.clone();
    for p in 0..parts {
        let np = format!("%n{p}");
        let end = b.bin("addi", &start, &np, x);
        let ge = b.cmpi("uge", &col, &start, x);
        let lt = b.cmpi("ult", &col, &end, x);
        let mine = b.bin("andi", &ge, &lt, Ty::I1);
        let trips = b.select(&mine, "%k", &c0, x);
        let j0 = b.bin("subi", &col, &start, x);
        let j = b.select(&mine, &j0, &c0, x);
        let w = format!("%w{p}");
        let r = b.for_(&c0, &trips, &c1, &[(&acc, f)], |b, kk, a| {
            let xa = b.bin("addi", &xrow, kk, x);
            let xv = b.load("%x", &xa, f);
            let (xv, wv) = if bf16 {
                // Element (kk / 2, j, kk % 2) of the pairs.
                let xh = b.f32_to_bf16(&xv);
                let xv = b.bf16_to_f32(&xh);
                let two = b.index(2);
                let t = b.bin("divui", kk, &two, x);
                let h = b.bin("remui", kk, &two, x);
                let r = b.bin("muli", &t, &np, x);
                let r = b.bin("addi", &r, &j, x);
                let r = b.bin("muli", &r, &two, x);
                let wa = b.bin("addi", &r, &h, x);
                let wh = b.load(&w, &wa, Ty::BF16);
                (xv, b.bf16_to_f32(&wh))
            } else {
                let wa = if transposed {
                    let r = b.bin("muli", &j, "%k", x);
                    b.bin("addi", &r, kk, x)
                } else {
                    let r = b.bin("muli", kk, &np, x);
                    b.bin("addi", &r, &j, x)
                };
                (xv, b.load(&w, &wa, f))
            };
            let m = b.bin("mulf", &xv, &wv, f);
            vec![b.bin("addf", &a[0], &m, f)]
        });
        acc = r[0].clone();
        start = end;
    }
    if bias {
        let bv = b.load("%bias", &col, f);
        acc = b.bin("addf", &acc, &bv, f);
    }
    b.store(&acc, "%y", "%i", f);
    Kernel {
        name: name.into(),
        params,
        body: b.finish(),
    }
}
