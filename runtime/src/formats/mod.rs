//! The number formats of lpc, one file each, behind one trait.
//!
//! `../shared/formats/SPEC.md` (copied beside the golden vectors in
//! `tests/fixtures/formats/`) is normative. Each format is bit-exact against
//! the golden vectors; these scalar implementations are the oracle that every
//! fast path (SIMD, LLVM-emitted, PTX) is tested against.
//!
//! Adding a format: one file implementing [`BlockFormat`], one variant of
//! [`Format`], and its golden vectors in `tests/`.

pub mod bits;
mod bulk;
pub mod codes;
pub mod hif4;
pub mod hif8;
pub mod mxfp4;
pub mod rowscale;
pub mod search;

pub use bulk::{
    dequantize_along_axis, quantize_along_axis, quantize_along_axis_with, AxisLayout, Element,
};
pub use hif4::{Hif4, Hif4Unit, Hif4Variant};
pub use hif8::{Hif8, Hif8Code, Hif8Rounding};
pub use mxfp4::{Mxfp4, Mxfp4Block, Mxfp4Rounding};

use std::fmt;

/// A block-scaled number format: blocks of `BLOCK_LEN` consecutive elements
/// along a GEMM's reduction axis, each packed into one `Block`.
pub trait BlockFormat: Copy + Send + Sync + 'static {
    /// The packed block: `#[repr(C)]` bytes with a `const` size assertion.
    type Block: bytemuck::Pod + Default + PartialEq + fmt::Debug + Send + Sync;
    /// Rounding mode or encoder variant.
    type Mode: Copy + Default + PartialEq + fmt::Debug + Send + Sync + 'static;
    /// The format's name on the command line.
    const NAME: &'static str;
    /// Elements per block.
    const BLOCK_LEN: usize;
    /// Bytes per packed block.
    const BLOCK_BYTES: usize = std::mem::size_of::<Self::Block>();

    /// Quantizes one block. `x.len() <= BLOCK_LEN`; missing trailing elements
    /// are +0.0 padding, which never changes the result for the others.
    fn quantize_block(x: &[f32], mode: Self::Mode) -> Self::Block;

    /// Dequantizes the first `out.len() <= BLOCK_LEN` elements of a block.
    fn dequantize_block(block: &Self::Block, out: &mut [f32]);

    /// Quantizes one contiguous row into `out.len() == ceil(x.len() / BLOCK_LEN)`
    /// blocks, the last one zero-padded. A format may override this with a
    /// faster equivalent; the bulk tests check it against `quantize_block`.
    /// Always inlined, so that the bulk paths' vector-ISA builds vectorize it.
    #[inline(always)]
    fn quantize_row(x: &[f32], mode: Self::Mode, out: &mut [Self::Block]) {
        for (o, c) in out.iter_mut().zip(x.chunks(Self::BLOCK_LEN)) {
            *o = Self::quantize_block(c, mode);
        }
    }
}

/// A format with its mode, chosen at run time (the CLI, the compiler).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Format {
    Mxfp4(Mxfp4Rounding),
    Hif4(Hif4Variant),
    Hif8(Hif8Rounding),
}

/// Errors of format selection and of the bulk paths.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum FormatError {
    UnknownFormat(String),
    UnknownMode {
        format: &'static str,
        what: &'static str,
        value: String,
        allowed: &'static [&'static str],
    },
    ModeNotApplicable {
        format: &'static str,
        what: &'static str,
    },
    AxisOutOfRange {
        axis: isize,
        rank: usize,
    },
    NotBlockMultiple {
        format: &'static str,
        axis: usize,
        len: usize,
        block: usize,
    },
    SizeMismatch {
        what: &'static str,
        expected: usize,
        got: usize,
    },
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownFormat(s) => {
                write!(
                    f,
                    "unknown format `{s}` (expected one of: mxfp4, hif4, hif8)"
                )
            }
            Self::UnknownMode {
                format,
                what,
                value,
                allowed,
            } => write!(
                f,
                "unknown {what} `{value}` for {format} (expected one of: {})",
                allowed.join(", ")
            ),
            Self::ModeNotApplicable { format, what } => {
                write!(f, "{format} has no {what} option")
            }
            Self::AxisOutOfRange { axis, rank } => {
                write!(f, "axis {axis} is out of range for a tensor of rank {rank}")
            }
            Self::NotBlockMultiple {
                format,
                axis,
                len,
                block,
            } => write!(
                f,
                "axis {axis} has length {len}, not a multiple of the {format} block of {block} \
                 (pass --pad to pad the last block with zeros)"
            ),
            Self::SizeMismatch {
                what,
                expected,
                got,
            } => write!(f, "{what}: expected {expected}, got {got}"),
        }
    }
}

impl std::error::Error for FormatError {}

impl Format {
    /// All format names, for help texts.
    pub const NAMES: &'static [&'static str] = &["mxfp4", "hif4", "hif8"];

    /// Builds a format from its CLI spelling. `rounding` applies to mxfp4 and
    /// hif8, `variant` to hif4; giving one that does not apply is an error.
    pub fn parse(
        format: &str,
        rounding: Option<&str>,
        variant: Option<&str>,
    ) -> Result<Self, FormatError> {
        fn pick<M: std::str::FromStr + Default>(
            format: &'static str,
            what: &'static str,
            value: Option<&str>,
            allowed: &'static [&'static str],
        ) -> Result<M, FormatError> {
            match value {
                None => Ok(M::default()),
                Some(v) => v.parse().map_err(|_| FormatError::UnknownMode {
                    format,
                    what,
                    value: v.to_string(),
                    allowed,
                }),
            }
        }
        let na = |format, what| Err(FormatError::ModeNotApplicable { format, what });
        match format {
            "mxfp4" => {
                if variant.is_some() {
                    return na("mxfp4", "variant");
                }
                pick("mxfp4", "rounding", rounding, Mxfp4Rounding::NAMES).map(Self::Mxfp4)
            }
            "hif4" => {
                if rounding.is_some() {
                    return na("hif4", "rounding");
                }
                pick("hif4", "variant", variant, Hif4Variant::NAMES).map(Self::Hif4)
            }
            "hif8" => {
                if variant.is_some() {
                    return na("hif8", "variant");
                }
                pick("hif8", "rounding", rounding, Hif8Rounding::NAMES).map(Self::Hif8)
            }
            other => Err(FormatError::UnknownFormat(other.to_string())),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Mxfp4(_) => Mxfp4::NAME,
            Self::Hif4(_) => Hif4::NAME,
            Self::Hif8(_) => Hif8::NAME,
        }
    }

    /// The rounding mode or variant, by name.
    pub fn mode_name(self) -> &'static str {
        match self {
            Self::Mxfp4(m) => m.name(),
            Self::Hif4(v) => v.name(),
            Self::Hif8(m) => m.name(),
        }
    }

    pub fn block_len(self) -> usize {
        match self {
            Self::Mxfp4(_) => Mxfp4::BLOCK_LEN,
            Self::Hif4(_) => Hif4::BLOCK_LEN,
            Self::Hif8(_) => Hif8::BLOCK_LEN,
        }
    }

    pub fn block_bytes(self) -> usize {
        match self {
            Self::Mxfp4(_) => Mxfp4::BLOCK_BYTES,
            Self::Hif4(_) => Hif4::BLOCK_BYTES,
            Self::Hif8(_) => Hif8::BLOCK_BYTES,
        }
    }

    /// Storage cost of full blocks, in bits per element (4.25, 4.5, 8).
    pub fn bits_per_element(self) -> f64 {
        (self.block_bytes() * 8) as f64 / self.block_len() as f64
    }

    /// Checks `axis` against `shape` and the block size and returns the layout.
    /// A negative axis counts from the end. Unless `pad`, the axis length must
    /// be a multiple of the block.
    pub fn layout(
        self,
        shape: &[usize],
        axis: isize,
        pad: bool,
    ) -> Result<AxisLayout, FormatError> {
        let rank = shape.len();
        let a = if axis < 0 { axis + rank as isize } else { axis };
        if a < 0 || a >= rank as isize {
            return Err(FormatError::AxisOutOfRange { axis, rank });
        }
        let a = a as usize;
        let len = shape[a];
        if !pad && !len.is_multiple_of(self.block_len()) {
            return Err(FormatError::NotBlockMultiple {
                format: self.name(),
                axis: a,
                len,
                block: self.block_len(),
            });
        }
        Ok(AxisLayout::new(shape, a, self.block_len()))
    }

    /// Quantizes `x` along the layout's axis into packed bytes (see
    /// [`AxisLayout`] for their order). Parallel with the `parallel` feature.
    pub fn quantize<T: Element>(
        self,
        x: &[T],
        layout: &AxisLayout,
    ) -> Result<Vec<u8>, FormatError> {
        let mut out = vec![0u8; layout.num_blocks() * self.block_bytes()];
        self.quantize_into(x, layout, &mut out)?;
        Ok(out)
    }

    /// As [`Format::quantize`], into a caller's buffer of
    /// `layout.num_blocks() · block_bytes()` bytes (no allocation: the
    /// runtime quantizes activation rows with it).
    pub fn quantize_into<T: Element>(
        self,
        x: &[T],
        layout: &AxisLayout,
        out: &mut [u8],
    ) -> Result<(), FormatError> {
        fn run<F: BlockFormat, T: Element>(
            x: &[T],
            l: &AxisLayout,
            mode: F::Mode,
            out: &mut [u8],
        ) -> Result<(), FormatError> {
            let want = l.num_blocks() * F::BLOCK_BYTES;
            if out.len() != want {
                return Err(FormatError::SizeMismatch {
                    what: "packed output bytes",
                    expected: want,
                    got: out.len(),
                });
            }
            // Blocks are align-1 byte arrays, so this cast cannot fail.
            quantize_along_axis::<F, T>(x, l, mode, bytemuck::cast_slice_mut(out))
        }
        match self {
            Self::Mxfp4(m) => run::<Mxfp4, T>(x, layout, m, out),
            Self::Hif4(v) => run::<Hif4, T>(x, layout, v, out),
            Self::Hif8(m) => run::<Hif8, T>(x, layout, m, out),
        }
    }

    /// As [`Format::quantize`], with the scale search of [`search`] for the
    /// 4-bit formats (HiF8 has no block scale: the same as `quantize`).
    pub fn quantize_search<T: Element>(
        self,
        x: &[T],
        layout: &AxisLayout,
    ) -> Result<Vec<u8>, FormatError> {
        self.quantize_search_weighted(x, layout, None)
    }

    /// [`Format::quantize_search`] with each block's error weighted by
    /// `importance`, one weight per index along the layout's axis (see
    /// [`search`]); `None` weighs every element alike.
    pub fn quantize_search_weighted<T: Element>(
        self,
        x: &[T],
        layout: &AxisLayout,
        importance: Option<&[f32]>,
    ) -> Result<Vec<u8>, FormatError> {
        fn run<F: BlockFormat, T: Element>(
            x: &[T],
            l: &AxisLayout,
            enc: impl Fn(&[f32], usize) -> F::Block + Sync,
        ) -> Result<Vec<u8>, FormatError> {
            let mut out = vec![0u8; l.num_blocks() * F::BLOCK_BYTES];
            quantize_along_axis_with::<F, T>(x, l, enc, bytemuck::cast_slice_mut(&mut out))?;
            Ok(out)
        }
        if let Some(w) = importance.filter(|w| w.len() != layout.axis_len) {
            return Err(FormatError::SizeMismatch {
                what: "search importances",
                expected: layout.axis_len,
                got: w.len(),
            });
        }
        let at = |k: usize| importance.map(|w| &w[k..]);
        match self {
            Self::Mxfp4(m) => {
                run::<Mxfp4, T>(x, layout, |b, k| search::mxfp4_block_weighted(b, m, at(k)))
            }
            Self::Hif4(v) => {
                run::<Hif4, T>(x, layout, |b, k| search::hif4_unit_weighted(b, v, at(k)))
            }
            Self::Hif8(_) => self.quantize(x, layout),
        }
    }

    /// Dequantizes packed bytes back to f32 in the tensor's own layout.
    pub fn dequantize(self, packed: &[u8], layout: &AxisLayout) -> Result<Vec<f32>, FormatError> {
        fn run<F: BlockFormat>(p: &[u8], l: &AxisLayout) -> Result<Vec<f32>, FormatError> {
            let expected = l.num_blocks() * F::BLOCK_BYTES;
            if p.len() != expected {
                return Err(FormatError::SizeMismatch {
                    what: "packed bytes",
                    expected,
                    got: p.len(),
                });
            }
            // Blocks are align-1 byte arrays, so this cast cannot fail.
            let blocks: &[F::Block] = bytemuck::cast_slice(p);
            let mut out = vec![0f32; l.num_elements()];
            dequantize_along_axis::<F>(blocks, l, &mut out)?;
            Ok(out)
        }
        match self {
            Self::Mxfp4(_) => run::<Mxfp4>(packed, layout),
            Self::Hif4(_) => run::<Hif4>(packed, layout),
            Self::Hif8(_) => run::<Hif8>(packed, layout),
        }
    }

    /// Encodes one block (`x.len() <= block_len()`, zero-padded) into its
    /// packed bytes: the spec's rule, or the scale search of [`search`].
    pub fn encode_block(self, x: &[f32], search: bool) -> Vec<u8> {
        self.encode_block_with(x, search.then_some(None))
    }

    /// [`Format::encode_block`]: `None` the spec's rule, `Some(importance)`
    /// the scale search, its error weighted by `importance` (per element of
    /// the block) when given.
    pub fn encode_block_with(self, x: &[f32], search: Option<Option<&[f32]>>) -> Vec<u8> {
        fn bytes<B: bytemuck::Pod>(b: B) -> Vec<u8> {
            bytemuck::bytes_of(&b).to_vec()
        }
        match (self, search) {
            (Self::Mxfp4(m), Some(w)) => bytes(search::mxfp4_block_weighted(x, m, w)),
            (Self::Mxfp4(m), None) => bytes(Mxfp4::quantize_block(x, m)),
            (Self::Hif4(v), Some(w)) => bytes(search::hif4_unit_weighted(x, v, w)),
            (Self::Hif4(v), None) => bytes(Hif4::quantize_block(x, v)),
            (Self::Hif8(m), _) => bytes(Hif8::quantize_block(x, m)),
        }
    }

    /// For a 4-bit format's packed block: the value of each of the 16
    /// element codes at every position, given the block's scale (and HiF4's
    /// micro-exponents), which stay fixed. `None` for HiF8 (no block scale).
    /// Element `i`'s code is the nibble `i % 2` of data byte `i / 2` in both
    /// 4-bit formats (see [`Format::set_code`]).
    pub fn code_values(self, block: &[u8]) -> Option<Vec<[f32; 16]>> {
        fn run<F: BlockFormat>(block: &[u8], data: usize) -> Vec<[f32; 16]> {
            let mut out = vec![[0f32; 16]; F::BLOCK_LEN];
            let mut b = block.to_vec();
            let mut y = vec![0f32; F::BLOCK_LEN];
            for c in 0..16u8 {
                b[data..].fill(c | c << 4);
                F::dequantize_block(bytemuck::from_bytes(&b), &mut y);
                for (o, &v) in out.iter_mut().zip(&y) {
                    o[c as usize] = v;
                }
            }
            out
        }
        match self {
            Self::Mxfp4(_) => Some(run::<Mxfp4>(block, 1)),
            Self::Hif4(_) => Some(run::<Hif4>(block, 4)),
            Self::Hif8(_) => None,
        }
    }

    /// Sets element `i`'s 4-bit code in a packed 4-bit block.
    pub fn set_code(self, block: &mut [u8], i: usize, code: u8) {
        let data = match self {
            Self::Mxfp4(_) => 1,
            Self::Hif4(_) => 4,
            Self::Hif8(_) => {
                block[i] = code;
                return;
            }
        };
        let sh = 4 * (i % 2);
        let b = &mut block[data + i / 2];
        *b = (*b & !(0xF << sh)) | (code & 0xF) << sh;
    }

    /// HiF8 only: the code and value of one element (`None` for block formats).
    pub fn quantize_scalar(self, x: f32) -> Option<(u8, f32)> {
        match self {
            Self::Hif8(m) => {
                let c = hif8::encode(x, m);
                Some((c, hif8::decode(c)))
            }
            _ => None,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.mode_name())
    }
}
