//! Whole-tensor quantization along one axis.
//!
//! A tensor of shape `[..., K, ...]` quantized along the axis of length K is
//! viewed as `[outer, K, inner]`. Each of the `outer * inner` *rows* (one
//! index on every other axis) is cut into `ceil(K / BLOCK_LEN)` blocks along
//! K, the last one zero-padded. Packed blocks are stored row by row in C order
//! of the remaining axes, the blocks of one row contiguous: for a weight
//! `W[K, N]` quantized along axis 0 that is `N` rows of `K / 32` MXFP4 blocks,
//! the order a dot product against an activation row consumes.

use super::{BlockFormat, FormatError};

/// An element type the bulk paths read: widening to f32 is exact.
pub trait Element: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;
    /// The slice itself when it already is f32 (no widening copy needed).
    fn as_f32(x: &[Self]) -> Option<&[f32]> {
        let _ = x;
        None
    }
}

impl Element for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    fn as_f32(x: &[f32]) -> Option<&[f32]> {
        Some(x)
    }
}

impl Element for half::f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
}

impl Element for half::bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }
}

/// A tensor seen as `[outer, axis_len, inner]` for blocking along the middle axis.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct AxisLayout {
    pub outer: usize,
    pub axis_len: usize,
    pub inner: usize,
    pub block_len: usize,
}

impl AxisLayout {
    /// Panics if `axis >= shape.len()`; [`super::Format::layout`] checks first.
    pub fn new(shape: &[usize], axis: usize, block_len: usize) -> Self {
        Self {
            outer: shape[..axis].iter().product(),
            axis_len: shape[axis],
            inner: shape[axis + 1..].iter().product(),
            block_len,
        }
    }
    pub fn rows(&self) -> usize {
        self.outer * self.inner
    }
    pub fn blocks_per_row(&self) -> usize {
        self.axis_len.div_ceil(self.block_len)
    }
    pub fn num_blocks(&self) -> usize {
        self.rows() * self.blocks_per_row()
    }
    pub fn num_elements(&self) -> usize {
        self.outer * self.axis_len * self.inner
    }
}

/// Rows handed to one task: about 64 Ki elements.
fn rows_per_task(l: &AxisLayout) -> usize {
    (65536 / l.axis_len.max(1)).max(1)
}

/// Columns gathered at once when the axis is not the last one.
const TILE: usize = 16;
const MAX_BLOCK: usize = 64;

fn check<F: BlockFormat>(l: &AxisLayout, elems: usize, blocks: usize) -> Result<(), FormatError> {
    assert!(F::BLOCK_LEN <= MAX_BLOCK && l.block_len == F::BLOCK_LEN);
    if elems != l.num_elements() {
        return Err(FormatError::SizeMismatch {
            what: "tensor elements",
            expected: l.num_elements(),
            got: elems,
        });
    }
    if blocks != l.num_blocks() {
        return Err(FormatError::SizeMismatch {
            what: "blocks",
            expected: l.num_blocks(),
            got: blocks,
        });
    }
    Ok(())
}

/// [`quantize_rows`] compiled for the best instruction set this CPU has. The
/// block codecs are plain Rust written to auto-vectorize; inlined into a
/// function with wider vector features they use 256/512-bit registers. The
/// result is identical on every path (tested against the baseline below).
fn quantize_rows_dispatch<F: BlockFormat, T: Element>(
    x: &[T],
    l: &AxisLayout,
    mode: F::Mode,
    r0: usize,
    out: &mut [F::Block],
) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx2") {
            // SAFETY: the CPU has every feature the function is compiled for.
            unsafe { quantize_rows_avx512::<F, T>(x, l, mode, r0, out) };
            return;
        }
        if has!("avx2") && has!("fma") {
            // SAFETY: as above.
            unsafe { quantize_rows_avx2::<F, T>(x, l, mode, r0, out) };
            return;
        }
    }
    quantize_rows::<F, T>(x, l, mode, r0, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,bmi2")]
unsafe fn quantize_rows_avx512<F: BlockFormat, T: Element>(
    x: &[T],
    l: &AxisLayout,
    mode: F::Mode,
    r0: usize,
    out: &mut [F::Block],
) {
    quantize_rows::<F, T>(x, l, mode, r0, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,bmi2")]
unsafe fn quantize_rows_avx2<F: BlockFormat, T: Element>(
    x: &[T],
    l: &AxisLayout,
    mode: F::Mode,
    r0: usize,
    out: &mut [F::Block],
) {
    quantize_rows::<F, T>(x, l, mode, r0, out)
}

/// Quantizes rows `r0..r0 + out.len() / blocks_per_row` into `out`.
#[inline(always)]
fn quantize_rows<F: BlockFormat, T: Element>(
    x: &[T],
    l: &AxisLayout,
    mode: F::Mode,
    r0: usize,
    out: &mut [F::Block],
) {
    let (k, bl, bpr) = (l.axis_len, F::BLOCK_LEN, l.blocks_per_row());
    let mut buf = [0f32; MAX_BLOCK * TILE];
    if l.inner == 1 {
        let rows = &x[r0 * k..][..out.len() / bpr * k];
        if let Some(rows) = T::as_f32(rows) {
            for (row, row_out) in rows.chunks_exact(k).zip(out.chunks_exact_mut(bpr)) {
                F::quantize_row(row, mode, row_out);
            }
        } else {
            let mut wide = vec![0f32; k];
            for (row, row_out) in rows.chunks_exact(k).zip(out.chunks_exact_mut(bpr)) {
                for (d, s) in wide.iter_mut().zip(row) {
                    *d = s.to_f32();
                }
                F::quantize_row(&wide, mode, row_out);
            }
        }
        return;
    }
    let rows = out.len() / bpr;
    let mut j = 0;
    while j < rows {
        let r = r0 + j;
        let (o, i0) = (r / l.inner, r % l.inner);
        let t = TILE.min(l.inner - i0).min(rows - j);
        for b in 0..bpr {
            let kn = bl.min(k - b * bl);
            for kk in 0..kn {
                let src = &x[(o * k + b * bl + kk) * l.inner + i0..][..t];
                for (c, s) in src.iter().enumerate() {
                    buf[c * bl + kk] = s.to_f32();
                }
            }
            for c in 0..t {
                out[(j + c) * bpr + b] = F::quantize_block(&buf[c * bl..c * bl + kn], mode);
            }
        }
        j += t;
    }
}

/// Dequantizes the blocks of rows `r0..` (as many as `blocks` holds) into `y`,
/// the full output tensor.
fn dequantize_rows<F: BlockFormat>(blocks: &[F::Block], l: &AxisLayout, r0: usize, y: &mut [f32]) {
    let (k, bl, bpr) = (l.axis_len, F::BLOCK_LEN, l.blocks_per_row());
    let mut buf = [0f32; MAX_BLOCK];
    for (j, row_blocks) in blocks.chunks_exact(bpr).enumerate() {
        let r = r0 + j;
        let (o, i) = (r / l.inner, r % l.inner);
        for (b, blk) in row_blocks.iter().enumerate() {
            let kn = bl.min(k - b * bl);
            if l.inner == 1 {
                F::dequantize_block(blk, &mut y[r * k + b * bl..][..kn]);
            } else {
                F::dequantize_block(blk, &mut buf[..kn]);
                for (kk, v) in buf[..kn].iter().enumerate() {
                    y[(o * k + b * bl + kk) * l.inner + i] = *v;
                }
            }
        }
    }
}

/// Quantizes a whole tensor along the layout's axis into `out`
/// (`l.num_blocks()` blocks, in the order described in the module docs).
/// With the `parallel` feature, runs on the current rayon pool.
pub fn quantize_along_axis<F: BlockFormat, T: Element>(
    x: &[T],
    l: &AxisLayout,
    mode: F::Mode,
    out: &mut [F::Block],
) -> Result<(), FormatError> {
    check::<F>(l, x.len(), out.len())?;
    let bpr = l.blocks_per_row();
    if bpr == 0 || l.rows() == 0 {
        return Ok(());
    }
    let chunk = rows_per_task(l) * bpr;
    #[cfg(feature = "parallel")]
    {
        use rayon::prelude::*;
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(t, o)| quantize_rows_dispatch::<F, T>(x, l, mode, t * chunk / bpr, o));
    }
    #[cfg(not(feature = "parallel"))]
    for (t, o) in out.chunks_mut(chunk).enumerate() {
        quantize_rows_dispatch::<F, T>(x, l, mode, t * chunk / bpr, o);
    }
    Ok(())
}

/// Quantizes along the layout's axis with a custom block encoder (e.g. the
/// scale search): rows are gathered, cut into blocks (the last one
/// zero-padded by the encoder) and encoded one by one, each with its first
/// element's index along the axis; parallel with the `parallel` feature.
/// Same block order as [`quantize_along_axis`].
pub fn quantize_along_axis_with<F: BlockFormat, T: Element>(
    x: &[T],
    l: &AxisLayout,
    encode: impl Fn(&[f32], usize) -> F::Block + Sync,
    out: &mut [F::Block],
) -> Result<(), FormatError> {
    check::<F>(l, x.len(), out.len())?;
    let bpr = l.blocks_per_row();
    if bpr == 0 || l.rows() == 0 {
        return Ok(());
    }
    let row = |r: usize, dst: &mut [F::Block]| {
        let (o, i) = (r / l.inner, r % l.inner);
        let v: Vec<f32> = (0..l.axis_len)
            .map(|k| x[(o * l.axis_len + k) * l.inner + i].to_f32())
            .collect();
        for (j, (b, chunk)) in dst.iter_mut().zip(v.chunks(F::BLOCK_LEN)).enumerate() {
            *b = encode(chunk, j * F::BLOCK_LEN);
        }
    };
    #[cfg(feature = "parallel")]
    {
        use rayon::prelude::*;
        out.par_chunks_mut(bpr)
            .enumerate()
            .for_each(|(r, dst)| row(r, dst));
    }
    #[cfg(not(feature = "parallel"))]
    for (r, dst) in out.chunks_mut(bpr).enumerate() {
        row(r, dst);
    }
    Ok(())
}

/// Dequantizes packed blocks back into `y` in the tensor's own layout.
pub fn dequantize_along_axis<F: BlockFormat>(
    blocks: &[F::Block],
    l: &AxisLayout,
    y: &mut [f32],
) -> Result<(), FormatError> {
    check::<F>(l, y.len(), blocks.len())?;
    let bpr = l.blocks_per_row();
    if bpr == 0 || l.rows() == 0 {
        return Ok(());
    }
    let chunk = rows_per_task(l) * bpr;
    #[cfg(feature = "parallel")]
    if l.inner == 1 {
        // Rows are disjoint contiguous ranges of y: split y alongside.
        use rayon::prelude::*;
        let rows = chunk / bpr;
        blocks
            .par_chunks(chunk)
            .zip(y.par_chunks_mut(rows * l.axis_len))
            .for_each(|(b, yc)| {
                let tmp = AxisLayout {
                    outer: yc.len() / l.axis_len,
                    ..*l
                };
                dequantize_rows::<F>(b, &tmp, 0, yc)
            });
        return Ok(());
    }
    for (t, b) in blocks.chunks(chunk).enumerate() {
        dequantize_rows::<F>(b, l, t * chunk / bpr, y);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{Format, Hif4, Mxfp4, Mxfp4Rounding};
    use super::*;

    fn data(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 5.0)
            .collect()
    }

    /// Quantizing along a middle axis equals transposing that axis last and
    /// quantizing contiguously.
    #[test]
    fn strided_axis_matches_contiguous_transpose() {
        let (a, k, c) = (3, 100, 37);
        let x = data(a * k * c);
        let mut xt = vec![0f32; x.len()];
        for i in 0..a {
            for kk in 0..k {
                for j in 0..c {
                    xt[(i * c + j) * k + kk] = x[(i * k + kk) * c + j];
                }
            }
        }
        for f in [
            Format::Mxfp4(Mxfp4Rounding::Rne),
            Format::Hif4(Default::default()),
        ] {
            let l = f.layout(&[a, k, c], 1, true).unwrap();
            let lt = f.layout(&[a, c, k], 2, true).unwrap();
            let p = f.quantize(&x, &l).unwrap();
            assert_eq!(p, f.quantize(&xt, &lt).unwrap());
            let y = f.dequantize(&p, &l).unwrap();
            let yt = f.dequantize(&p, &lt).unwrap();
            for i in 0..a {
                for kk in 0..k {
                    for j in 0..c {
                        assert_eq!(y[(i * k + kk) * c + j], yt[(i * c + j) * k + kk]);
                    }
                }
            }
        }
    }

    /// The vector-ISA builds of the codecs equal the baseline build, on data
    /// with every kind of special (zeros, ±0, subnormals, huge, NaN, Inf).
    #[test]
    fn dispatched_paths_equal_baseline() {
        fn check<F: BlockFormat>(mode: F::Mode, x: &[f32], shape: &[usize], axis: usize) {
            let l = AxisLayout::new(shape, axis, F::BLOCK_LEN);
            let mut base = vec![F::Block::default(); l.num_blocks()];
            quantize_rows::<F, f32>(x, &l, mode, 0, &mut base);
            let mut fast = vec![F::Block::default(); l.num_blocks()];
            quantize_rows_dispatch::<F, f32>(x, &l, mode, 0, &mut fast);
            assert_eq!(base, fast, "{} {mode:?} {shape:?} axis {axis}", F::NAME);
            let mut api = vec![F::Block::default(); l.num_blocks()];
            quantize_along_axis::<F, f32>(x, &l, mode, &mut api).unwrap();
            assert_eq!(base, api);
        }
        let mut s = 0x1234_5678_9ABC_DEF1u64;
        let x: Vec<f32> = (0..64 * 200)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                match i % 211 {
                    0 => f32::NAN,
                    1 => f32::NEG_INFINITY,
                    2 => -0.0,
                    3 => f32::from_bits(s as u32 & 0x807F_FFFF),
                    4 => f32::from_bits(0x7F00_0000 | s as u32 & 0x807F_FFFF),
                    _ => f32::from_bits(
                        (0x3000_0000 + (s as u32 & 0x1FFF_FFFF)) | (s >> 63 << 31) as u32,
                    ),
                }
            })
            .collect();
        use super::super::{Hif4Variant as V4, Hif8, Hif8Rounding as R8, Mxfp4Rounding as R4};
        for (shape, axis) in [
            (&[200usize, 64][..], 1),
            (&[64, 200][..], 0),
            (&[10, 40, 32][..], 1),
        ] {
            for m in [R4::Rne, R4::TiesAway] {
                check::<Mxfp4>(m, &x, shape, axis);
            }
            for v in [V4::Consortium, V4::Amct] {
                check::<Hif4>(v, &x, shape, axis);
            }
            for m in [R8::Ta, R8::Saturate, R8::Hybrid] {
                check::<Hif8>(m, &x, shape, axis);
            }
        }
    }

    #[test]
    fn padding_matches_explicit_zeros() {
        let x = data(2 * 70);
        let mut padded = vec![0f32; 2 * 128];
        for r in 0..2 {
            padded[r * 128..r * 128 + 70].copy_from_slice(&x[r * 70..r * 70 + 70]);
        }
        let l = AxisLayout::new(&[2, 70], 1, 64);
        let lp = AxisLayout::new(&[2, 128], 1, 64);
        let mut a = vec![Default::default(); l.num_blocks()];
        let mut b = vec![Default::default(); lp.num_blocks()];
        quantize_along_axis::<Hif4, f32>(&x, &l, Default::default(), &mut a).unwrap();
        quantize_along_axis::<Hif4, f32>(&padded, &lp, Default::default(), &mut b).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn size_mismatch_is_an_error() {
        let l = AxisLayout::new(&[4, 32], 1, 32);
        let mut out = vec![Default::default(); 3];
        let err = quantize_along_axis::<Mxfp4, f32>(&[0.0; 128], &l, Default::default(), &mut out);
        assert!(matches!(err, Err(FormatError::SizeMismatch { .. })));
    }
}
