//! The weights file (`model.lpcw`): a fixed 64-byte header, the data region
//! (every tensor 64-byte aligned, at the offsets the generated code was
//! compiled with) and an index (a prost message written by the compiler, for
//! tools; the runtime needs only the header).
//!
//! ```text
//! 0   8  magic "LPCW\0\0\0\x01"
//! 8   8  data length (u64 LE)
//! 16  4  CRC-32 of the data region
//! 20  4  index length
//! 24  8  index offset
//! 32 32  zero
//! 64 ..  data region, then the index
//! ```

use std::fs::File;
use std::path::Path;

pub const MAGIC: &[u8; 8] = b"LPCW\0\0\0\x01";
pub const HEADER: usize = 64;
pub const ALIGN: usize = 64;

/// The header of a weights file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub data_len: u64,
    pub crc: u32,
    pub index_len: u32,
    pub index_offset: u64,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER] {
        let mut h = [0u8; HEADER];
        h[..8].copy_from_slice(MAGIC);
        h[8..16].copy_from_slice(&self.data_len.to_le_bytes());
        h[16..20].copy_from_slice(&self.crc.to_le_bytes());
        h[20..24].copy_from_slice(&self.index_len.to_le_bytes());
        h[24..32].copy_from_slice(&self.index_offset.to_le_bytes());
        h
    }

    pub fn decode(b: &[u8]) -> Result<Self, String> {
        if b.len() < HEADER {
            return Err(format!(
                "is truncated: {} bytes, shorter than the {HEADER}-byte header",
                b.len()
            ));
        }
        if &b[..8] != MAGIC {
            return Err("is not an lpc weights file (bad magic)".into());
        }
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        Ok(Self {
            data_len: u64_at(8),
            crc: u32_at(16),
            index_len: u32_at(20),
            index_offset: u64_at(24),
        })
    }
}

pub fn crc32(data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(data);
    h.finalize()
}

/// A mapped, checked weights file. The data region is used in place: nothing
/// is copied.
#[derive(Debug)]
pub struct Mapped {
    map: memmap2::Mmap,
}

impl Mapped {
    /// Maps `path` and checks it against what the library was compiled with:
    /// size, and the CRC-32 both of the header and of the bytes themselves.
    pub fn open(path: &Path, want_len: u64, want_crc: u32) -> Result<Self, String> {
        let p = path.display();
        let f = File::open(path).map_err(|e| format!("weights file {p}: {e}"))?;
        // SAFETY: the map is read-only; a file truncated underneath a running
        // model is outside what any mmap-based loader can defend against.
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| format!("mapping {p}: {e}"))?;
        let h = Header::decode(&map).map_err(|e| format!("weights file {p} {e}"))?;
        let end = HEADER as u64 + h.data_len;
        if (map.len() as u64) < end {
            return Err(format!(
                "weights file {p} is truncated: {} bytes, the header promises {end}",
                map.len()
            ));
        }
        if h.data_len != want_len || h.crc != want_crc {
            return Err(format!(
                "weights file {p} belongs to another compile: {} bytes with CRC {:08x}, the library expects {want_len} bytes with CRC {want_crc:08x}",
                h.data_len, h.crc
            ));
        }
        let got = crc32(&map[HEADER..end as usize]);
        if got != h.crc {
            return Err(format!(
                "weights file {p} is corrupt: CRC {got:08x}, expected {:08x}",
                h.crc
            ));
        }
        Ok(Self { map })
    }

    /// The data region (what generated code indexes by offset).
    pub fn data(&self) -> &[u8] {
        &self.map[HEADER..]
    }
}
