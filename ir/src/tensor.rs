//! Constant tensors: element type, dimensions and little-endian bytes that may
//! point straight into a memory-mapped model file (zero copy).

use crate::DType;
use bytes::Bytes;
use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct Tensor {
    pub dtype: DType,
    pub dims: Vec<usize>,
    /// C-order, little-endian element bytes (`dtype.bytes_for(len)` of them).
    pub data: Bytes,
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Tensor({}{:?}, {} bytes)",
            self.dtype,
            self.dims,
            self.data.len()
        )
    }
}

impl Tensor {
    /// Wraps bytes; `None` if their length does not match dtype and dims.
    pub fn new(dtype: DType, dims: Vec<usize>, data: Bytes) -> Option<Self> {
        let n = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
        (data.len() == dtype.bytes_for(n)).then_some(Self { dtype, dims, data })
    }

    pub fn len(&self) -> usize {
        self.dims.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn from_f32(dims: Vec<usize>, v: &[f32]) -> Self {
        let data: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        Self::new(DType::F32, dims, data.into()).expect("f32 tensor size")
    }

    pub fn from_i64(dims: Vec<usize>, v: &[i64]) -> Self {
        let data: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        Self::new(DType::I64, dims, data.into()).expect("i64 tensor size")
    }

    /// Every element widened to f64 (exact for all types but large i64).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        let d = &self.data;
        let n = self.len();
        let le2 = |i: usize| [d[2 * i], d[2 * i + 1]];
        let le4 = |i: usize| [d[4 * i], d[4 * i + 1], d[4 * i + 2], d[4 * i + 3]];
        let le8 = |i: usize| -> [u8; 8] { d[8 * i..8 * i + 8].try_into().unwrap() };
        (0..n)
            .map(|i| match self.dtype {
                DType::F32 => f32::from_le_bytes(le4(i)) as f64,
                DType::F16 => half::f16::from_le_bytes(le2(i)).to_f64(),
                DType::Bf16 => half::bf16::from_le_bytes(le2(i)).to_f64(),
                DType::F64 => f64::from_le_bytes(le8(i)),
                DType::I64 => i64::from_le_bytes(le8(i)) as f64,
                DType::I32 => i32::from_le_bytes(le4(i)) as f64,
                DType::I8 => d[i] as i8 as f64,
                DType::U8 => d[i] as f64,
                DType::Bool => (d[i] != 0) as u8 as f64,
                DType::U4 => ((d[i / 2] >> (4 * (i % 2))) & 0xF) as f64,
                DType::I4 => ((((d[i / 2] >> (4 * (i % 2))) & 0xF) << 4) as i8 >> 4) as f64,
            })
            .collect()
    }

    /// Integer elements (for shapes, axes, indices); `None` for float types.
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        let d = &self.data;
        Some(match self.dtype {
            DType::I64 => d
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            DType::I32 => d
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                .collect(),
            DType::I8 | DType::U8 | DType::Bool | DType::I4 | DType::U4 => {
                self.to_f64_vec().into_iter().map(|v| v as i64).collect()
            }
            _ => return None,
        })
    }

    /// A 64-bit FNV-1a hash of dtype, dims and bytes: the identity of a large
    /// constant in the textual IR.
    pub fn fingerprint(&self) -> u64 {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        let mut eat = |b: u8| {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01B3);
        };
        eat(self.dtype.onnx_code() as u8);
        for &d in &self.dims {
            d.to_le_bytes().into_iter().for_each(&mut eat);
        }
        self.data.iter().copied().for_each(eat);
        h
    }
}
