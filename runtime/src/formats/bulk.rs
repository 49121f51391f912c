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
}

impl Element for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
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

/// Quantizes rows `r0..r0 + out.len() / blocks_per_row` into `out`.
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
        for (j, row_out) in out.chunks_exact_mut(bpr).enumerate() {
            let row = &x[(r0 + j) * k..][..k];
            for (b, blk) in row_out.iter_mut().enumerate() {
                let src = &row[b * bl..(b * bl + bl).min(k)];
                for (d, s) in buf.iter_mut().zip(src) {
                    *d = s.to_f32();
                }
                *blk = F::quantize_block(&buf[..src.len()], mode);
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
            .for_each(|(t, o)| quantize_rows::<F, T>(x, l, mode, t * chunk / bpr, o));
    }
    #[cfg(not(feature = "parallel"))]
    for (t, o) in out.chunks_mut(chunk).enumerate() {
        quantize_rows::<F, T>(x, l, mode, t * chunk / bpr, o);
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
