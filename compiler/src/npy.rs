//! Reading and writing NumPy `.npy` files (format versions 1.0, 2.0, 3.0).
//!
//! Written by hand rather than with npyz because lpc must read bf16 tensors:
//! `ml_dtypes.bfloat16` arrays are saved with the descr `'<V2'`, which no npy
//! crate maps to bf16, and because every error here must name the file and
//! say what is wrong in one line.

use lpc_ir::DType;
use std::io::Write;
use std::path::Path;
use thiserror::Error;

const MAGIC: &[u8] = b"\x93NUMPY";

#[derive(Debug, Error)]
pub enum NpyError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a .npy file: {why}")]
    Malformed { path: String, why: String },
    #[error("{path}: unsupported element type `{descr}`{hint}")]
    UnsupportedDescr {
        path: String,
        descr: String,
        hint: &'static str,
    },
}

/// A dense array read from a `.npy` file: little-endian element bytes in C order.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl NpyArray {
    pub fn num_elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Maps a descr to a dtype; `Err(hint)` for ones lpc does not read.
fn dtype_of_descr(descr: &str) -> Result<DType, &'static str> {
    let (order, code) = descr.split_at(descr.len().min(1));
    let little = matches!(order, "<" | "|");
    let any_order = matches!(order, "<" | "|" | ">" | "=");
    let t = match code {
        "f4" => DType::F32,
        "f2" => DType::F16,
        // ml_dtypes' bfloat16 is saved as a 2-byte void.
        "V2" => DType::Bf16,
        "f8" => DType::F64,
        "i8" => DType::I64,
        "i4" => DType::I32,
        "i1" => DType::I8,
        "u1" => DType::U8,
        "b1" => DType::Bool,
        _ => return Err(""),
    };
    if !any_order {
        return Err("");
    }
    if !little && t.size() > 1 {
        return Err(" (big-endian data is not supported)");
    }
    Ok(t)
}

fn descr_of_dtype(t: DType) -> Option<&'static str> {
    Some(match t {
        DType::F32 => "<f4",
        DType::F16 => "<f2",
        DType::Bf16 => "<V2",
        DType::F64 => "<f8",
        DType::I64 => "<i8",
        DType::I32 => "<i4",
        DType::I8 => "|i1",
        DType::U8 => "|u1",
        DType::Bool => "|b1",
        DType::I4 | DType::U4 => return None,
    })
}

/// Value of `'key': <value>` in the header dict, up to the next top-level comma.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let k = header.find(&format!("'{key}'"))?;
    let rest = header[k + key.len() + 2..]
        .trim_start()
        .strip_prefix(':')?
        .trim_start();
    let mut depth = 0i32;
    for (i, ch) in rest.char_indices() {
        match ch {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(rest[..i].trim()),
            _ => {}
        }
    }
    None
}

/// Parses the bytes of a `.npy` file; `path` only names the file in errors.
pub fn parse(bytes: &[u8], path: &str) -> Result<NpyArray, NpyError> {
    let bad = |why: String| NpyError::Malformed {
        path: path.to_string(),
        why,
    };
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad("missing the \\x93NUMPY magic".into()));
    }
    let major = bytes[6];
    let (hlen, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(bad(format!("unknown format version {major}.{}", bytes[7]))),
    };
    let header = bytes
        .get(start..start + hlen)
        .ok_or_else(|| bad("header is truncated".into()))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not text".into()))?;
    let descr = dict_value(header, "descr")
        .and_then(|d| d.strip_prefix('\'')?.strip_suffix('\''))
        .ok_or_else(|| bad("header has no 'descr' string".into()))?;
    let dtype = dtype_of_descr(descr).map_err(|hint| NpyError::UnsupportedDescr {
        path: path.to_string(),
        descr: descr.to_string(),
        hint,
    })?;
    match dict_value(header, "fortran_order") {
        Some("False") => {}
        Some("True") => return Err(bad("Fortran-order arrays are not supported".into())),
        _ => return Err(bad("header has no 'fortran_order' flag".into())),
    }
    let shape_txt = dict_value(header, "shape")
        .and_then(|s| s.strip_prefix('(')?.strip_suffix(')'))
        .ok_or_else(|| bad("header has no 'shape' tuple".into()))?;
    let shape = shape_txt
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| bad(format!("bad shape ({shape_txt})")))?;
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .and_then(|n| n.checked_mul(dtype.size()))
        .ok_or_else(|| bad(format!("shape ({shape_txt}) is too large")))?;
    let data = &bytes[start + hlen..];
    if data.len() != n {
        return Err(bad(format!(
            "data has {} bytes, but shape ({shape_txt}) of {dtype} needs {n}",
            data.len()
        )));
    }
    Ok(NpyArray {
        dtype,
        shape,
        data: data.to_vec(),
    })
}

/// Reads a `.npy` file.
pub fn read(path: &Path) -> Result<NpyArray, NpyError> {
    let p = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| NpyError::Io {
        path: p.clone(),
        source,
    })?;
    parse(&bytes, &p)
}

/// Reads every array of a `.npz` bundle (as `np.savez` or
/// `np.savez_compressed` write it): `(name without .npy, array)` in archive
/// order.
pub fn read_npz(path: &Path) -> Result<Vec<(String, NpyArray)>, NpyError> {
    let p = path.display().to_string();
    let bad = |why: String| NpyError::Malformed {
        path: p.clone(),
        why,
    };
    let f = std::fs::File::open(path).map_err(|source| NpyError::Io {
        path: p.clone(),
        source,
    })?;
    let mut zip =
        zip::ZipArchive::new(f).map_err(|e| bad(format!("not a .npz (zip) bundle: {e}")))?;
    let mut out = Vec::new();
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| bad(format!("entry {i}: {e}")))?;
        let name = entry
            .name()
            .map_err(|e| bad(format!("entry {i}: {e}")))?
            .to_string();
        let Some(stem) = name.strip_suffix(".npy") else {
            continue;
        };
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        std::io::Read::read_to_end(&mut entry, &mut bytes)
            .map_err(|e| bad(format!("entry {name}: {e}")))?;
        out.push((stem.to_string(), parse(&bytes, &format!("{p}:{name}"))?));
    }
    Ok(out)
}

/// Writes arrays as an uncompressed `.npz` bundle (what `np.savez` writes).
pub fn write_npz<W: Write + std::io::Seek>(
    w: W,
    arrays: &[(String, DType, Vec<usize>, &[u8])],
) -> std::io::Result<()> {
    let mut z = zip::ZipWriter::new(w);
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, dtype, shape, data) in arrays {
        z.start_file(format!("{name}.npy"), opts)
            .map_err(std::io::Error::other)?;
        write(&mut z, *dtype, shape, data)?;
    }
    z.finish().map_err(std::io::Error::other)?;
    Ok(())
}

/// Serializes an array as a version 1.0 `.npy` file.
pub fn write<W: Write>(
    w: &mut W,
    dtype: DType,
    shape: &[usize],
    data: &[u8],
) -> std::io::Result<()> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_txt = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let descr = descr_of_dtype(dtype).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("numpy has no {dtype} type"),
        )
    })?;
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_txt}, }}");
    // Pad so that the data starts on a 64-byte boundary; the header ends in '\n'.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat(total.next_multiple_of(64) - total));
    header.push('\n');
    w.write_all(MAGIC)?;
    w.write_all(&[1, 0])?;
    w.write_all(&(header.len() as u16).to_le_bytes())?;
    w.write_all(header.as_bytes())?;
    w.write_all(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(dtype: DType, shape: &[usize]) {
        let n: usize = shape.iter().product();
        let data: Vec<u8> = (0..n * dtype.size()).map(|i| i as u8).collect();
        let mut buf = Vec::new();
        write(&mut buf, dtype, shape, &data).unwrap();
        assert_eq!((buf.len() - data.len()) % 64, 0);
        let a = parse(&buf, "t.npy").unwrap();
        assert_eq!((a.dtype, a.shape.as_slice(), a.data), (dtype, shape, data));
    }

    #[test]
    fn writes_what_it_reads() {
        round_trip(DType::F32, &[2, 3]);
        round_trip(DType::Bf16, &[5]);
        round_trip(DType::F16, &[]);
        round_trip(DType::I64, &[1, 0, 4]);
    }

    #[test]
    fn reads_numpy_headers() {
        let h = "{'descr': '<V2', 'fortran_order': False, 'shape': (2, 3), }";
        let mut b = MAGIC.to_vec();
        b.extend([1, 0]);
        b.extend((h.len() as u16).to_le_bytes());
        b.extend(h.as_bytes());
        b.extend([0u8; 12]);
        let a = parse(&b, "x.npy").unwrap();
        assert_eq!((a.dtype, a.shape), (DType::Bf16, vec![2, 3]));
    }

    #[test]
    fn errors_name_the_problem() {
        let mut buf = Vec::new();
        write(&mut buf, DType::F32, &[4], &[0; 16]).unwrap();
        let e = parse(&buf[..buf.len() - 1], "a.npy")
            .unwrap_err()
            .to_string();
        assert!(e.contains("a.npy") && e.contains("15 bytes"), "{e}");
        let e = parse(b"hello world", "b.npy").unwrap_err().to_string();
        assert!(e.contains("magic"), "{e}");
        let mut be = Vec::new();
        write(&mut be, DType::F32, &[1], &[0; 4]).unwrap();
        let at = be.windows(3).position(|w| w == b"<f4").unwrap();
        be[at] = b'>';
        let e = parse(&be, "c.npy").unwrap_err().to_string();
        assert!(e.contains("big-endian"), "{e}");
    }
}
