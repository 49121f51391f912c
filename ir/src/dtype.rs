//! Element types, with their ONNX codes.

use std::fmt;

/// An element type, with its ONNX `TensorProto.DataType` code.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum DType {
    F32,
    F16,
    Bf16,
    F64,
    I64,
    I32,
    I8,
    U8,
    Bool,
    /// 4-bit integers, two per byte (low nibble first), as in ONNX INT4/UINT4.
    I4,
    U4,
}

impl DType {
    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::Bf16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
            // Packed two per byte: use `bytes_for` for buffer sizes.
            Self::I4 | Self::U4 => 1,
        }
    }

    /// Bytes needed for `n` elements (4-bit types pack two per byte).
    pub fn bytes_for(self, n: usize) -> usize {
        match self {
            Self::I4 | Self::U4 => n.div_ceil(2),
            _ => n * self.size(),
        }
    }

    /// The ONNX `TensorProto.DataType` code.
    pub fn onnx_code(self) -> i32 {
        match self {
            Self::F32 => 1,
            Self::U8 => 2,
            Self::I8 => 3,
            Self::I32 => 6,
            Self::I64 => 7,
            Self::Bool => 9,
            Self::F16 => 10,
            Self::F64 => 11,
            Self::Bf16 => 16,
            Self::U4 => 21,
            Self::I4 => 22,
        }
    }

    /// The inverse of [`DType::onnx_code`].
    pub fn from_onnx_code(code: i32) -> Option<Self> {
        Some(match code {
            1 => Self::F32,
            2 => Self::U8,
            3 => Self::I8,
            6 => Self::I32,
            7 => Self::I64,
            9 => Self::Bool,
            10 => Self::F16,
            11 => Self::F64,
            16 => Self::Bf16,
            21 => Self::U4,
            22 => Self::I4,
            _ => return None,
        })
    }

    /// The inverse of [`DType::name`].
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.name() == s)
    }

    pub const ALL: [DType; 11] = [
        Self::F32,
        Self::F16,
        Self::Bf16,
        Self::F64,
        Self::I64,
        Self::I32,
        Self::I8,
        Self::U8,
        Self::Bool,
        Self::I4,
        Self::U4,
    ];

    pub fn is_float(self) -> bool {
        matches!(self, Self::F32 | Self::F16 | Self::Bf16 | Self::F64)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
            Self::F64 => "f64",
            Self::I64 => "i64",
            Self::I32 => "i32",
            Self::I8 => "i8",
            Self::U8 => "u8",
            Self::Bool => "bool",
            Self::I4 => "i4",
            Self::U4 => "u4",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::DType;

    #[test]
    fn onnx_codes_round_trip() {
        for code in 0..32 {
            if let Some(d) = DType::from_onnx_code(code) {
                assert_eq!(d.onnx_code(), code);
            }
        }
        assert_eq!(DType::from_onnx_code(16), Some(DType::Bf16));
        assert_eq!(DType::from_onnx_code(4), None);
    }
}
