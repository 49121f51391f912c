//! The model descriptor: what a compiled library declares about itself (its
//! inputs and outputs with element types and symbolic shapes, the weights it
//! expects). The compiler encodes it into the library as a byte string; the
//! runtime decodes it at load time and checks every call's inputs against it.
//! One encoder and one decoder, both here, so the two sides cannot disagree.

/// Element types, numbered as ONNX's `TensorProto.DataType` (the C header
/// repeats these values).
pub mod dtype {
    pub const F32: i32 = 1;
    pub const U8: i32 = 2;
    pub const I8: i32 = 3;
    pub const I32: i32 = 6;
    pub const I64: i32 = 7;
    pub const BOOL: i32 = 9;
    pub const F16: i32 = 10;
    pub const F64: i32 = 11;
    pub const BF16: i32 = 16;

    /// Bytes per element; `None` for an unknown code.
    pub fn size(code: i32) -> Option<usize> {
        Some(match code {
            U8 | I8 | BOOL => 1,
            F16 | BF16 => 2,
            F32 | I32 => 4,
            I64 | F64 => 8,
            _ => return None,
        })
    }

    pub fn name(code: i32) -> &'static str {
        match code {
            F32 => "f32",
            U8 => "u8",
            I8 => "i8",
            I32 => "i32",
            I64 => "i64",
            BOOL => "bool",
            F16 => "f16",
            F64 => "f64",
            BF16 => "bf16",
            _ => "unknown",
        }
    }
}

/// One dimension of a declared shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DimDesc {
    Fixed(u64),
    /// Index into [`ModelDesc::symbols`].
    Sym(u32),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorDesc {
    pub name: String,
    pub dtype: i32,
    pub dims: Vec<DimDesc>,
}

/// A symbolic dimension and the largest value a call may bind it to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SymbolDesc {
    pub name: String,
    pub max: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelDesc {
    pub name: String,
    pub symbols: Vec<SymbolDesc>,
    pub inputs: Vec<TensorDesc>,
    pub outputs: Vec<TensorDesc>,
    /// Bytes of the weights data region and its CRC-32, as written at
    /// compile time.
    pub weights_len: u64,
    pub weights_crc: u32,
}

const MAGIC: &[u8; 8] = b"LPCDESC1";

struct W(Vec<u8>);
impl W {
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
    }
    fn tensor(&mut self, t: &TensorDesc) {
        self.str(&t.name);
        self.u32(t.dtype as u32);
        self.u32(t.dims.len() as u32);
        for d in &t.dims {
            match d {
                DimDesc::Fixed(n) => {
                    self.u32(0);
                    self.u64(*n);
                }
                DimDesc::Sym(s) => {
                    self.u32(1);
                    self.u64(*s as u64);
                }
            }
        }
    }
}

struct R<'a>(&'a [u8]);
impl R<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if self.0.len() < n {
            return Err("model descriptor is truncated".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn str(&mut self) -> Result<String, String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| "descriptor string is not UTF-8".into())
    }
    fn tensor(&mut self, nsym: usize) -> Result<TensorDesc, String> {
        let name = self.str()?;
        let dtype = self.u32()? as i32;
        let rank = self.u32()? as usize;
        if rank > crate::MAX_RANK {
            return Err(format!("`{name}` has rank {rank} > {}", crate::MAX_RANK));
        }
        let mut dims = Vec::with_capacity(rank);
        for _ in 0..rank {
            let kind = self.u32()?;
            let v = self.u64()?;
            dims.push(match kind {
                0 => DimDesc::Fixed(v),
                _ if (v as usize) < nsym => DimDesc::Sym(v as u32),
                _ => return Err(format!("`{name}`: bad dimension in the descriptor")),
            });
        }
        Ok(TensorDesc { name, dtype, dims })
    }
}

impl ModelDesc {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = W(MAGIC.to_vec());
        w.str(&self.name);
        w.u32(self.symbols.len() as u32);
        for s in &self.symbols {
            w.str(&s.name);
            w.u64(s.max);
        }
        for list in [&self.inputs, &self.outputs] {
            w.u32(list.len() as u32);
            for t in list {
                w.tensor(t);
            }
        }
        w.u64(self.weights_len);
        w.u32(self.weights_crc);
        w.0
    }

    pub fn decode(b: &[u8]) -> Result<Self, String> {
        let mut r = R(b);
        if r.take(8)? != MAGIC {
            return Err("not an lpc model descriptor (bad magic)".into());
        }
        let name = r.str()?;
        let n = r.u32()? as usize;
        let mut symbols = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            let name = r.str()?;
            symbols.push(SymbolDesc {
                name,
                max: r.u64()?,
            });
        }
        let mut lists = [Vec::new(), Vec::new()];
        for l in &mut lists {
            let n = r.u32()? as usize;
            for _ in 0..n {
                l.push(r.tensor(symbols.len())?);
            }
        }
        let [inputs, outputs] = lists;
        Ok(Self {
            name,
            symbols,
            inputs,
            outputs,
            weights_len: r.u64()?,
            weights_crc: r.u32()?,
        })
    }

    /// The declared shape as text, `[batch, 2, past, 64]`.
    pub fn shape_text(&self, t: &TensorDesc) -> String {
        let d: Vec<String> = t
            .dims
            .iter()
            .map(|d| match d {
                DimDesc::Fixed(n) => n.to_string(),
                DimDesc::Sym(s) => self.symbols[*s as usize].name.clone(),
            })
            .collect();
        format!("[{}]", d.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let d = ModelDesc {
            name: "m".into(),
            symbols: vec![SymbolDesc {
                name: "batch".into(),
                max: 64,
            }],
            inputs: vec![TensorDesc {
                name: "x".into(),
                dtype: dtype::F32,
                dims: vec![DimDesc::Sym(0), DimDesc::Fixed(3)],
            }],
            outputs: vec![],
            weights_len: 10,
            weights_crc: 7,
        };
        let b = d.encode();
        assert_eq!(ModelDesc::decode(&b).unwrap(), d);
        for n in 0..b.len() {
            assert!(ModelDesc::decode(&b[..n]).is_err());
        }
    }
}
