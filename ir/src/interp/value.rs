//! Run-time tensors of the interpreter: every float type is computed in f32
//! (f16/bf16 widened, results rounded back on `Cast`), every integer type in
//! i64, booleans as bools; the logical element type is kept alongside.

use crate::{DType, Tensor};

#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F(Vec<f32>),
    I(Vec<i64>),
    B(Vec<bool>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct TensorValue {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Data,
}

/// The interpreter's storage class of a dtype.
pub fn is_float(d: DType) -> bool {
    matches!(d, DType::F32 | DType::F16 | DType::Bf16 | DType::F64)
}

/// Rounds an f32 to the precision of a float dtype (identity for f32/f64).
pub fn round_to(d: DType, x: f32) -> f32 {
    match d {
        DType::F16 => half::f16::from_f32(x).to_f32(),
        DType::Bf16 => half::bf16::from_f32(x).to_f32(),
        _ => x,
    }
}

impl TensorValue {
    pub fn f32(shape: Vec<usize>, v: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), v.len());
        Self {
            dtype: DType::F32,
            shape,
            data: Data::F(v),
        }
    }
    pub fn i64(shape: Vec<usize>, v: Vec<i64>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), v.len());
        Self {
            dtype: DType::I64,
            shape,
            data: Data::I(v),
        }
    }
    pub fn bool(shape: Vec<usize>, v: Vec<bool>) -> Self {
        Self {
            dtype: DType::Bool,
            shape,
            data: Data::B(v),
        }
    }
    /// A value of the given logical dtype from data of its storage class.
    pub fn with_dtype(dtype: DType, shape: Vec<usize>, data: Data) -> Self {
        Self { dtype, shape, data }
    }

    pub fn len(&self) -> usize {
        match &self.data {
            Data::F(v) => v.len(),
            Data::I(v) => v.len(),
            Data::B(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Widens a constant.
    pub fn from_tensor(t: &Tensor) -> Self {
        let shape = t.dims.clone();
        let data = match t.dtype {
            DType::Bool => Data::B(t.data.iter().map(|&b| b != 0).collect()),
            d if is_float(d) => Data::F(t.to_f64_vec().into_iter().map(|v| v as f32).collect()),
            _ => Data::I(t.to_i64_vec().unwrap_or_default()),
        };
        Self {
            dtype: t.dtype,
            shape,
            data,
        }
    }

    /// Narrows back to a tensor of the logical dtype (little-endian bytes).
    pub fn to_tensor(&self) -> Tensor {
        let bytes: Vec<u8> = match (&self.data, self.dtype) {
            (Data::F(v), DType::F16) => v
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect(),
            (Data::F(v), DType::Bf16) => v
                .iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                .collect(),
            (Data::F(v), DType::F64) => v.iter().flat_map(|&x| (x as f64).to_le_bytes()).collect(),
            (Data::F(v), _) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            (Data::I(v), DType::I32) => v.iter().flat_map(|&x| (x as i32).to_le_bytes()).collect(),
            (Data::I(v), DType::I8 | DType::U8) => v.iter().map(|&x| x as u8).collect(),
            (Data::I(v), DType::I4 | DType::U4) => {
                let mut b = vec![0u8; v.len().div_ceil(2)];
                for (i, &x) in v.iter().enumerate() {
                    b[i / 2] |= ((x as u8) & 0xF) << (4 * (i % 2));
                }
                b
            }
            (Data::I(v), _) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            (Data::B(v), _) => v.iter().map(|&x| x as u8).collect(),
        };
        Tensor::new(self.dtype, self.shape.clone(), bytes.into()).expect("consistent value")
    }

    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            Data::F(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.data {
            Data::I(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<&[bool]> {
        match &self.data {
            Data::B(v) => Some(v),
            _ => None,
        }
    }
    /// Every element as f64, whatever the storage.
    pub fn to_f64(&self) -> Vec<f64> {
        match &self.data {
            Data::F(v) => v.iter().map(|&x| x as f64).collect(),
            Data::I(v) => v.iter().map(|&x| x as f64).collect(),
            Data::B(v) => v.iter().map(|&x| x as u8 as f64).collect(),
        }
    }
}
