//! Weight layouts owned by the CPU code generator.
//!
//! A 4-bit `lpc.qgemm` weight in the formats' own layout interleaves block
//! headers and nibbles (17-byte MXFP4 blocks, 36-byte HiF4 units), and puts
//! elements `2i` and `2i+1` in one byte. For AVX-512 VNNI + VBMI targets
//! the compiler rewrites such weights, byte count unchanged, into the *CPU
//! layout*, chosen for the kernels: *strips* of [`STRIP`] output columns
//! (rows of the weight), each `16 · bpr` bytes where its rows were:
//!
//! - the codes first, per group `g` of 128 K, 16 vectors of 64 bytes:
//!   vector `q` holds, in its 4-byte lane `c`, column `c`'s elements
//!   `128g + 4q .. + 4` in the low nibbles and `128g + 64 + 4q .. + 4` in
//!   the high nibbles. One AND (or shift) gives a K-group of 4 across the 16
//!   columns, the `vpdpbusd` operand of a broadcast activation dword:
//!   the panel GEMM packs with no transposes, and one row runs over the
//!   strip with no horizontal sums;
//! - then the headers, one 64-byte vector per group (MXFP4) or unit
//!   (HiF4), lane `c` for column `c`: MXFP4 the four blocks' E8M0 scales
//!   minus one (byte `b` for block `4g + b`; shifted left by 23 it is the
//!   f32 bit pattern of `2^(s-128)`, the block's factor for codes
//!   `2·E2M1`); HiF4 the unit's header as a little-endian dword: the E6M2
//!   scale in bits 0-7 and, for each pair of K-groups `p` (elements
//!   `8p..8p+8`), bits `8+3p..` = (e16 of K-group `2p`, e16 of K-group
//!   `2p+1`, e8 of the pair): the same 24 micro-exponent bits, arranged so
//!   that one `vpmultishiftqb` per pair and a table per parity give each
//!   K-group's shift.
//!
//! W8A8 HiF8 weights keep one byte per element, permuted within each
//! 64-byte chunk so that the kernel's exact decode (two `vpermi2b` tables
//! for the high and low bytes of the f32 value, then byte and word
//! unpacks, which work within 128-bit lanes) yields elements in natural
//! order: byte `16L + 4q + i` holds element `16q + 4L + i`. Weights with a
//! NaN code (0x80, which the tables would turn into -0) keep the formats'
//! layout.
//!
//! Only weights whose rows are whole groups (K a multiple of 128) are
//! rewritten, 4-bit ones only in whole strips (N a multiple of 16), and for
//! MXFP4 only when every block's scale is in `2..=254`
//! (blocks whose codes are all zero get an arbitrary valid scale: their
//! products are zero either way); anything else keeps the formats' layout
//! and the kernels that read it. The interpreter and the GPU path never see
//! the CPU layout: it exists only in the weights a CPU library reads.

use lpc_ir::{Graph, Node, ValueId};
use lpc_runtime::Format;
use std::collections::{HashMap, HashSet};

/// Elements per group of the CPU layout.
pub const GROUP: usize = 128;

/// Output columns per strip of a 4-bit weight in the CPU layout.
pub const STRIP: usize = 16;

/// The format of an `lpc.qgemm` whose weights may use the CPU layout:
/// weights and activations in the same format, W4A4 MXFP4/HiF4 on a target
/// with AVX-512 VNNI (`vnni`) and VBMI (`vbmi`: the strip kernels' table
/// lookups) or W8A8 HiF8 with VBMI, K a multiple of [`GROUP`].
pub fn cpu_layout_format(n: &Node, vnni: bool, vbmi: bool) -> Option<Format> {
    if n.op != "lpc.qgemm" {
        return None;
    }
    let name = n.string("wformat")?;
    let target = match name {
        "mxfp4" | "hif4" => vnni && vbmi,
        "hif8" => vbmi,
        _ => false,
    };
    if n.string("aformat") != Some(name) || !target {
        return None;
    }
    let k = n.int("k")?;
    if k <= 0 || !(k as usize).is_multiple_of(GROUP) {
        return None;
    }
    let f = match name {
        "hif4" => Format::parse(name, None, n.string("wmode")),
        _ => Format::parse(name, n.string("wmode"), None),
    }
    .ok()?;
    Some(f)
}

/// The constants to store in the CPU layout: weights of eligible `qgemm`
/// nodes (see [`cpu_layout_format`]) that nothing else reads, with their
/// format and K. Whether their data allows it is decided by [`repack`].
pub fn candidates(g: &Graph, vnni: bool, vbmi: bool) -> HashMap<ValueId, (Format, usize)> {
    let mut cand = HashMap::new();
    let mut spec = HashSet::new();
    for id in g.node_ids() {
        let n = g.node(id);
        let parts = n.int("parts").unwrap_or(1).max(1) as usize;
        let f = cpu_layout_format(n, vnni, vbmi);
        for (slot, v) in n.inputs.iter().enumerate() {
            let Some(v) = *v else { continue };
            if g.constant(v).is_none() {
                continue;
            }
            match f {
                Some(f) if (1..=parts).contains(&slot) => {
                    let k = n.int("k").unwrap_or(0) as usize;
                    if cand.insert(v, (f, k)).is_some_and(|old| old != (f, k)) {
                        spec.insert(v);
                    }
                }
                _ => {
                    spec.insert(v);
                }
            }
        }
    }
    spec.extend(g.outputs.iter().copied());
    cand.retain(|v, _| !spec.contains(v));
    cand
}

/// The nibble of element `e` of a row in the formats' layout.
fn nibble(f: Format, row: &[u8], e: usize) -> u8 {
    let (bl, bb, head) = match f {
        Format::Mxfp4(_) => (32, 17, 1),
        _ => (64, 36, 4),
    };
    let (t, i) = (e / bl, e % bl);
    let byte = row[t * bb + head + i / 2];
    if i % 2 == 0 {
        byte & 15
    } else {
        byte >> 4
    }
}

/// The element a byte position of a 64-byte HiF8 chunk holds in the CPU
/// layout (`16L + 4q + i` holds `16q + 4L + i`; an involution).
pub fn hif8_element(p: usize) -> usize {
    let (l, q, i) = (p / 16, (p / 4) % 4, p % 4);
    16 * q + 4 * l + i
}

/// A HiF4 unit header `[S, m1, m2, m3]` as the CPU layout's dword.
fn hif4_header(h: &[u8]) -> u32 {
    let (m1, m2, m3) = (h[1] as u32, h[2] as u32, h[3] as u32);
    let mut fields = 0u32;
    for p in 0..8 {
        let e8 = (m1 >> (7 - p)) & 1;
        for b in 0..2 {
            let l = 2 * p + b;
            let m = if l < 8 { m2 } else { m3 };
            fields |= ((m >> (7 - l % 8)) & 1) << (3 * p + b);
        }
        fields |= e8 << (3 * p + 2);
    }
    h[0] as u32 | fields << 8
}

/// `data` (rows of a weight in the formats' layout, `k` elements per row)
/// in the CPU layout, or `None` when the data does not allow it (an MXFP4
/// block with nonzero codes and a scale outside `2..=254`, a HiF8 NaN) or
/// the shape does not fit (4-bit: rows not whole strips).
pub fn repack(f: Format, data: &[u8], k: usize) -> Option<Vec<u8>> {
    if k == 0 || !k.is_multiple_of(GROUP) {
        return None;
    }
    if let Format::Hif8(_) = f {
        if data.is_empty() || !data.len().is_multiple_of(k) || data.contains(&0x80) {
            return None;
        }
        let mut out = vec![0u8; data.len()];
        for (src, dst) in data.chunks_exact(64).zip(out.chunks_exact_mut(64)) {
            for (p, d) in dst.iter_mut().enumerate() {
                *d = src[hif8_element(p)];
            }
        }
        return Some(out);
    }
    let (bl, bb) = (f.block_len(), f.block_bytes());
    let nb = k / bl;
    let bpr = nb * bb;
    if data.is_empty() || !data.len().is_multiple_of(bpr) {
        return None;
    }
    if !(data.len() / bpr).is_multiple_of(STRIP) {
        return None;
    }
    let codes = k / 2;
    let mut out = vec![0u8; data.len()];
    for (src, dst) in data
        .chunks_exact(STRIP * bpr)
        .zip(out.chunks_exact_mut(STRIP * bpr))
    {
        let (body, heads) = dst.split_at_mut(STRIP * codes);
        for (c, row) in src.chunks_exact(bpr).enumerate() {
            for g in 0..k / GROUP {
                for i in 0..GROUP / 2 {
                    let e = g * GROUP + i;
                    body[(g * 16 + i / 4) * 64 + 4 * c + i % 4] =
                        nibble(f, row, e) | (nibble(f, row, e + GROUP / 2) << 4);
                }
            }
            for t in 0..nb {
                match f {
                    Format::Mxfp4(_) => {
                        let s = row[t * bb];
                        let zero = row[t * bb + 1..(t + 1) * bb].iter().all(|&b| b & 0x77 == 0);
                        heads[(t / 4) * 64 + 4 * c + t % 4] = match s {
                            2..=254 => s - 1,
                            _ if zero => 126,
                            _ => return None,
                        };
                    }
                    _ => {
                        let h = hif4_header(&row[t * bb..t * bb + 4]);
                        heads[t * 64 + 4 * c..][..4].copy_from_slice(&h.to_le_bytes());
                    }
                }
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(name: &str) -> Format {
        Format::parse(name, None, None).unwrap()
    }

    fn rows(f: Format, k: usize, n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        let bpr = k / f.block_len() * f.block_bytes();
        (0..n * bpr)
            .map(|i| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let b = (s >> 33) as u8;
                // Valid MXFP4 scales away from the edges.
                if matches!(f, Format::Mxfp4(_)) && (i % bpr).is_multiple_of(17) {
                    100 + b % 40
                } else {
                    b
                }
            })
            .collect()
    }

    #[test]
    fn every_element_and_header_lands_where_the_kernels_read_it() {
        for (name, k) in [("mxfp4", 128), ("mxfp4", 384), ("hif4", 256)] {
            let f = fmt(name);
            let n = 2 * STRIP;
            let data = rows(f, k, n, k as u64);
            let out = repack(f, &data, k).unwrap();
            let bpr = data.len() / n;
            for r in 0..n {
                let src = &data[r * bpr..][..bpr];
                let strip = &out[r / STRIP * STRIP * bpr..][..STRIP * bpr];
                let c = r % STRIP;
                for e in 0..k {
                    let (g, i) = (e / GROUP, e % GROUP);
                    let b = strip[(g * 16 + (i % 64) / 4) * 64 + 4 * c + i % 4];
                    let got = if i < 64 { b & 15 } else { b >> 4 };
                    assert_eq!(got, nibble(f, src, e), "{name} k={k} row {r} element {e}");
                }
                let heads = &strip[STRIP * k / 2..];
                let bb = f.block_bytes();
                for t in 0..k / f.block_len() {
                    match f {
                        Format::Mxfp4(_) => {
                            assert_eq!(heads[t / 4 * 64 + 4 * c + t % 4] + 1, src[t * bb])
                        }
                        _ => {
                            // Each K-group's shift, as the kernels compute it.
                            let h = u32::from_le_bytes(
                                heads[t * 64 + 4 * c..][..4].try_into().unwrap(),
                            );
                            let s = &src[t * bb..][..4];
                            assert_eq!(h & 255, s[0] as u32);
                            for l in 0..16u32 {
                                let x = (h >> (8 + 3 * (l / 2) + l % 2))
                                    & if l % 2 == 0 { 5 } else { 3 };
                                let got = [0, 1, 1, 2, 1, 2][x as usize];
                                let e8 = (s[1] >> (7 - l / 2)) & 1;
                                let m = if l < 8 { s[2] } else { s[3] };
                                let e16 = (m >> (7 - l % 8)) & 1;
                                assert_eq!(got, e8 + e16, "lane {l}");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn unusable_data_and_shapes_keep_the_formats_layout() {
        let f = fmt("mxfp4");
        let mut data = rows(f, 128, STRIP, 7);
        assert!(repack(f, &data, 128).is_some());
        assert!(repack(f, &data, 64).is_none(), "K not a whole group");
        assert!(
            repack(f, &data[..data.len() / 2], 128).is_none(),
            "N not whole strips"
        );
        let h8: Vec<u8> = (0..256u32)
            .map(|i| match (i * 7 % 255) as u8 ^ 0x11 {
                0x80 => 0x81,
                b => b,
            })
            .collect();
        let out = repack(fmt("hif8"), &h8, 128).unwrap();
        for (p, &b) in out.iter().enumerate() {
            assert_eq!(b, h8[p / 64 * 64 + hif8_element(p % 64)]);
            assert_eq!(hif8_element(hif8_element(p % 64)), p % 64);
        }
        let mut nan = h8.clone();
        nan[3] = 0x80;
        assert!(repack(fmt("hif8"), &nan, 128).is_none());
        // A NaN scale (255) on a block with codes: refused.
        data[17] = 255;
        data[18] = 0x21;
        assert!(repack(f, &data, 128).is_none());
        // The same scale on an all-zero block (±0 codes): rewritten.
        data[18..34].fill(0x88);
        let out = repack(f, &data, 128).unwrap();
        assert_eq!(out[STRIP * 64 + 1], 126);
    }
}
