//! `bf16-linear`: the linear layers a quantization scheme leaves
//! unquantized, in bf16.
//!
//! Matches: every `lpc.linear` with constant weights (f32, f16 or bf16)
//! still in the graph after `fuse-qgemm`: the layers the plan left
//! unquantized (the output head, conditioning layers, `--exclude`,
//! `REGEX=none`).
//! Guarantees: the node gets `bf16 = 1` and each weight `W` (`[K, N]`, or
//! `[N, K]` when `transposed`) becomes a bf16 constant `[ceil(K/2), N, 2]`
//! of pairs along K, `W2[t, j, h] = bf16(W[2t + h, j])` (zero past K),
//! with `transposed` dropped: the layout that one `vdpbf16ps` per 16
//! columns reads. The node then computes `x` rounded to bf16 times the
//! bf16 weights, products exact and summed in f32 (see the interpreter's
//! `lpc.linear`). Weights half the bytes of f32, products at twice the
//! f32 rate on AVX-512 BF16. Run after `fuse-qgemm`, only when a scheme
//! quantizes (`QuantConfig::unquantized_bf16`); `dce` after.

use crate::Pass;
use lpc_ir::{Attr, DType, Graph, NodeId, Tensor};
use rayon::prelude::*;

#[derive(Debug)]
pub struct Bf16Linear;

/// Pair rows (of K) per parallel task, and columns per block of a
/// transposed weight's copy: a block's reads and writes stay in cache
/// (reading `[N, K]` column by column would touch a new page per element).
const BLOCK: usize = 64;

/// Element `i` of a float constant as bf16 bits (bf16 kept as it is, f32
/// and f16 rounded to nearest even).
fn bf16_bits(t: &Tensor, i: usize) -> u16 {
    let d = &t.data;
    match t.dtype {
        DType::Bf16 => u16::from_le_bytes([d[2 * i], d[2 * i + 1]]),
        DType::F16 => {
            half::bf16::from_f32(half::f16::from_le_bytes([d[2 * i], d[2 * i + 1]]).to_f32())
                .to_bits()
        }
        _ => {
            let b = [d[4 * i], d[4 * i + 1], d[4 * i + 2], d[4 * i + 3]];
            half::bf16::from_f32(f32::from_le_bytes(b)).to_bits()
        }
    }
}

/// `w` (`[K, N]`, or `[N, K]` when `tr`; f32, f16 or bf16) as bf16 pairs
/// `[ceil(K/2), N, 2]`, read in place (a 32B model's output head is 0.78 G
/// elements: no widened copy).
pub fn pairs(w: &Tensor, k: usize, n: usize, tr: bool) -> Tensor {
    let kp = k.div_ceil(2);
    let at = |kk: usize, j: usize| -> u16 {
        if kk >= k {
            0
        } else if tr {
            bf16_bits(w, j * k + kk)
        } else {
            bf16_bits(w, kk * n + j)
        }
    };
    let mut data = vec![0u8; kp * n * 4];
    data.par_chunks_mut(BLOCK * n * 4)
        .enumerate()
        .for_each(|(b, rows)| {
            let t0 = b * BLOCK;
            let nt = rows.len() / (n * 4);
            for j0 in (0..n).step_by(BLOCK) {
                for j in j0..(j0 + BLOCK).min(n) {
                    for t in 0..nt {
                        let o = (t * n + j) * 4;
                        let (lo, hi) = (at(2 * (t0 + t), j), at(2 * (t0 + t) + 1, j));
                        rows[o..o + 2].copy_from_slice(&lo.to_le_bytes());
                        rows[o + 2..o + 4].copy_from_slice(&hi.to_le_bytes());
                    }
                }
            }
        });
    Tensor::new(DType::Bf16, vec![kp, n, 2], data.into()).expect("pair layout size")
}

fn convert(g: &mut Graph, n: NodeId) -> bool {
    let node = g.node(n).clone();
    if node.int("bf16") == Some(1) {
        return false;
    }
    let parts = node.int("parts").unwrap_or(1).max(1) as usize;
    let tr = node.int("transposed") == Some(1);
    // Every weight a 2-D float constant, or the node stays as it is.
    let mut ws = Vec::with_capacity(parts);
    for p in 0..parts {
        let Some(v) = node.inputs.get(1 + p).copied().flatten() else {
            return false;
        };
        let Some(t) = g.constant(v) else {
            return false;
        };
        let (&[r, c], DType::F32 | DType::F16 | DType::Bf16) = (&t.dims[..], t.dtype) else {
            return false;
        };
        let (k, nn) = if tr { (c, r) } else { (r, c) };
        ws.push((v, pairs(t, k, nn, tr)));
    }
    for (p, (v, t)) in ws.into_iter().enumerate() {
        let name = format!("{}/bf16", g.value(v).name);
        let c = g.add_const(name, t);
        g.set_input(n, 1 + p, Some(c));
    }
    let attrs = &mut g.node_mut(n).attrs;
    attrs.remove("transposed");
    attrs.insert("bf16".into(), Attr::Int(1));
    true
}

impl Pass for Bf16Linear {
    fn name(&self) -> &'static str {
        "bf16-linear"
    }
    fn summary(&self) -> &'static str {
        "keep the unquantized linear layers in bf16 (weights as K pairs)"
    }
    fn run(&self, g: &mut Graph) -> Result<bool, String> {
        let order = crate::util::topo(g)?;
        let mut changed = false;
        for n in order {
            if g.contains_node(n) && g.node(n).op == "lpc.linear" {
                changed |= convert(g, n);
            }
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Weights spanning several blocks both ways, odd K, each float type,
    /// stored as given and transposed: element by element against the
    /// definition.
    #[test]
    fn pairs_hold_the_rounded_weights_along_k() {
        let (k, n) = (2 * BLOCK + 37, BLOCK + 9);
        let v: Vec<f32> = (0..k * n)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 37.0)
            .collect();
        for dt in [DType::F32, DType::F16, DType::Bf16] {
            let enc = |x: f32| -> Vec<u8> {
                match dt {
                    DType::F16 => half::f16::from_f32(x).to_le_bytes().to_vec(),
                    DType::Bf16 => half::bf16::from_f32(x).to_le_bytes().to_vec(),
                    _ => x.to_le_bytes().to_vec(),
                }
            };
            let dec = |b: &[u8]| -> f32 {
                match dt {
                    DType::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
                    DType::Bf16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
                    _ => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                }
            };
            for tr in [false, true] {
                // W[kk, j] = v[kk * n + j], stored [K, N] or [N, K].
                let stored: Vec<u8> = (0..k * n)
                    .flat_map(|i| {
                        let (a, b) = (i / if tr { k } else { n }, i % if tr { k } else { n });
                        let (kk, j) = if tr { (b, a) } else { (a, b) };
                        enc(v[kk * n + j])
                    })
                    .collect();
                let dims = if tr { vec![n, k] } else { vec![k, n] };
                let w = Tensor::new(dt, dims, stored.into()).unwrap();
                let p = pairs(&w, k, n, tr);
                assert_eq!(p.dims, vec![k.div_ceil(2), n, 2]);
                let sz = dt.size();
                for t in 0..k.div_ceil(2) {
                    for j in 0..n {
                        for h in 0..2 {
                            let kk = 2 * t + h;
                            let want = if kk < k {
                                let i = if tr { j * k + kk } else { kk * n + j };
                                half::bf16::from_f32(dec(&w.data[sz * i..sz * i + sz]))
                            } else {
                                half::bf16::ZERO
                            };
                            let o = 2 * ((t * n + j) * 2 + h);
                            let got = half::bf16::from_le_bytes([p.data[o], p.data[o + 1]]);
                            assert_eq!(
                                got.to_bits(),
                                want.to_bits(),
                                "{dt} tr {tr} [{t}, {j}, {h}]"
                            );
                        }
                    }
                }
            }
        }
    }
}
