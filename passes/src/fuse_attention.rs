//! `fuse-attention`: rotary embeddings and scaled dot-product attention to
//! `lpc.rope` and `lpc.attention`.
//!
//! Matches:
//! - opset 23 `RotaryEmbedding` -> `lpc.rope` (same operands and attributes);
//! - the TorchScript rotate-half chain
//!   `Add(Mul(x, C), Mul(Concat(Neg(Slice(x, h:)), Slice(x, :h)), S))` where
//!   `C`/`S` are `Unsqueeze(T, [1])` of tables whose halves are equal
//!   (`Cos`/`Sin` of `Concat(f, f)`, optionally scaled) -> `lpc.rope(x,
//!   C[..., :h], S[..., :h])`;
//! - opset 23 `Attention` on 4-D operands without a KV cache or softcap, and
//!   the eager chain `MatMul(Softmax(Add?(Mul|Div?(MatMul(q·a, Transpose(k)·b), c), m)), v)`
//!   (K transposed from `[B, H, S, D]` or from `[B, S, H, D]`)
//!   -> `lpc.attention(q, k, v, mask?) {scale, is_causal}`; in both, K and V
//!   repeated for grouped-query attention (`Reshape(Expand(Unsqueeze(k, [2])))`)
//!   are replaced by the unrepeated ones, since `lpc.attention` groups heads;
//! - onnxruntime's `GroupQueryAttention` -> `lpc.rope` on q and k and
//!   `lpc.attention` with the KV cache and `seqlens_k` operands.
//!
//! Guarantees: `lpc.rope` is ONNX `RotaryEmbedding` (cos/sin may have batch 1);
//! `lpc.attention` is ONNX `Attention`, with GroupQueryAttention's cache
//! semantics when its operand 6 (`seqlens_k`) is present. Needs
//! `fold-shapes` first (the patterns check shapes) and `dce` after.

use crate::util::{arg, def_op, replace_value, scalar, single_use};
use crate::Pass;
use lpc_ir::{Attr, Dim, Graph, NodeId, Tensor, ValueId};
use std::collections::BTreeMap;

pub struct FuseAttention;

fn shape(g: &Graph, v: ValueId) -> Option<Vec<Dim>> {
    g.value(v).ty.as_ref()?.shape.clone()
}

/// `k` itself when `v` is k repeated per head group for GQA.
fn unrepeat(g: &Graph, v: ValueId) -> ValueId {
    (|| {
        let (_, rs) = def_op(g, v, "Reshape")?;
        let (_, ex) = def_op(g, arg(rs, 0)?, "Expand")?;
        let (_, un) = def_op(g, arg(ex, 0)?, "Unsqueeze")?;
        let k = arg(un, 0)?;
        let axes = arg(un, 1).and_then(|a| g.constant(a)?.to_i64_vec()).or_else(|| un.ints("axes").map(|x| x.to_vec()))?;
        let (ks, es, out) = (shape(g, k)?, shape(g, ex.outputs[0])?, shape(g, v)?);
        // [B, Hkv, S, D] -> [B, Hkv, n, S, D] -> [B, Hkv * n, S, D]
        let ok = axes == [2]
            && ks.len() == 4
            && es.len() == 5
            && out.len() == 4
            && es[0] == ks[0]
            && es[1] == ks[1]
            && es[3] == ks[2]
            && es[4] == ks[3]
            && out[0] == ks[0]
            && out[2] == ks[2]
            && out[3] == ks[3]
            && matches!((&ks[1], &es[2], &out[1]), (Dim::Fixed(h), Dim::Fixed(n), Dim::Fixed(t)) if h * n == *t);
        ok.then_some(k)
    })()
    .unwrap_or(v)
}

fn slice_last(g: &mut Graph, x: ValueId, half: usize, name: &str) -> ValueId {
    let c = |g: &mut Graph, n: &str, v: i64| {
        g.add_const(format!("{name}/{n}"), Tensor::from_i64(vec![1], &[v]))
    };
    let (st, en, ax) = (c(g, "start", 0), c(g, "end", half as i64), c(g, "axis", -1));
    let ty = g.value(x).ty.clone().map(|mut t| {
        if let Some(s) = &mut t.shape {
            if let Some(l) = s.last_mut() {
                *l = Dim::Fixed(half);
            }
        }
        t
    });
    let (_, o) = g.add_node(
        lpc_ir::NewNode {
            name: name.to_string(),
            op: "Slice".into(),
            attrs: BTreeMap::new(),
            inputs: vec![Some(x), Some(st), Some(en), Some(ax)],
        },
        vec![(format!("{name}/out"), ty)],
    );
    o[0]
}

/// The table under `Unsqueeze(T, [1])` when T's last-axis halves are equal
/// by construction: `[Mul(] Cos|Sin(Concat(f, f)) [, scalar)]`.
fn duplicated_table(g: &Graph, c: ValueId) -> Option<ValueId> {
    let (_, un) = def_op(g, c, "Unsqueeze")?;
    let axes = arg(un, 1)
        .and_then(|a| g.constant(a)?.to_i64_vec())
        .or_else(|| un.ints("axes").map(|x| x.to_vec()))?;
    if axes != [1] {
        return None;
    }
    let t = arg(un, 0)?;
    let mut inner = t;
    if let Some((_, m)) = def_op(g, t, "Mul") {
        let (a, b) = (arg(m, 0)?, arg(m, 1)?);
        inner = if scalar(g, b).is_some() {
            a
        } else if scalar(g, a).is_some() {
            b
        } else {
            return None;
        };
    }
    let (_, trig) = def_op(g, inner, "Cos").or_else(|| def_op(g, inner, "Sin"))?;
    let (_, cat) = def_op(g, arg(trig, 0)?, "Concat")?;
    (cat.inputs.len() == 2 && cat.inputs[0] == cat.inputs[1] && cat.int("axis") == Some(-1))
        .then_some(t)
}

/// Slice(x, lo..hi) on the last axis with constant bounds.
fn last_axis_slice(g: &Graph, v: ValueId) -> Option<(ValueId, i64, i64)> {
    let (_, s) = def_op(g, v, "Slice")?;
    let k = |i| arg(s, i).and_then(|a| g.constant(a)?.to_i64_vec());
    let (st, en, ax) = (k(1)?, k(2)?, k(3)?);
    let steps_ok = arg(s, 4).is_none() || k(4)? == [1];
    (steps_ok && st.len() == 1 && (ax == [-1] || ax == [3])).then_some((arg(s, 0)?, st[0], en[0]))
}

/// The TorchScript rotate-half: returns (x, cos table, sin table, half).
fn match_rotate_half(g: &Graph, n: NodeId) -> Option<(ValueId, ValueId, ValueId, usize)> {
    let add = g.node(n);
    let (m1, m2) = (arg(add, 0)?, arg(add, 1)?);
    for (a, b) in [(m1, m2), (m2, m1)] {
        let (Some((_, ma)), Some((_, mb))) = (def_op(g, a, "Mul"), def_op(g, b, "Mul")) else {
            continue;
        };
        // mb = Mul(Concat(Neg(x2), x1), S)
        let (rot, s_tab) = if def_op(g, arg(mb, 0)?, "Concat").is_some() {
            (arg(mb, 0)?, arg(mb, 1)?)
        } else {
            (arg(mb, 1)?, arg(mb, 0)?)
        };
        let Some((_, cat)) = def_op(g, rot, "Concat") else {
            continue;
        };
        if cat.inputs.len() != 2 || cat.int("axis") != Some(-1) {
            continue;
        }
        let Some((_, neg)) = def_op(g, cat.inputs[0]?, "Neg") else {
            continue;
        };
        let Some((x2, lo2, _)) = last_axis_slice(g, arg(neg, 0)?) else {
            continue;
        };
        let Some((x1, lo1, hi1)) = last_axis_slice(g, cat.inputs[1]?) else {
            continue;
        };
        let x = x1;
        let d = match shape(g, x)?.last()? {
            Dim::Fixed(d) => *d as i64,
            _ => continue,
        };
        if x2 != x || lo1 != 0 || hi1 != lo2 || 2 * hi1 != d {
            continue;
        }
        // ma = Mul(x, C)
        let c_tab = if arg(ma, 0)? == x {
            arg(ma, 1)?
        } else if arg(ma, 1)? == x {
            arg(ma, 0)?
        } else {
            continue;
        };
        let (Some(ct), Some(st)) = (duplicated_table(g, c_tab), duplicated_table(g, s_tab)) else {
            continue;
        };
        if shape(g, x)?.len() != 4 {
            continue;
        }
        return Some((x, ct, st, (d / 2) as usize));
    }
    None
}

/// The eager attention chain rooted at `MatMul(P, v)`:
/// (q, k, k is [B, S, H, D], v, mask, scale).
#[allow(clippy::type_complexity)]
fn match_sdpa(
    g: &Graph,
    n: NodeId,
) -> Option<(ValueId, ValueId, bool, ValueId, Option<ValueId>, f32)> {
    let mm = g.node(n);
    let (p, v) = (arg(mm, 0)?, arg(mm, 1)?);
    let (_, sm) = def_op(g, p, "Softmax")?;
    if sm.int("axis").unwrap_or(-1) != -1 && sm.int("axis") != Some(3) || !single_use(g, p) {
        return None;
    }
    let mut s = arg(sm, 0)?;
    let mut mask = None;
    if let Some((_, add)) = def_op(g, s, "Add") {
        let (a, b) = (arg(add, 0)?, arg(add, 1)?);
        let scores_first = def_op(g, a, "Mul")
            .or_else(|| def_op(g, a, "Div"))
            .is_some();
        let (sc, m) = if scores_first { (a, b) } else { (b, a) };
        mask = Some(m);
        s = sc;
    }
    // An optional scale on the scores...
    let (scaled, mut scale) = match (def_op(g, s, "Mul"), def_op(g, s, "Div")) {
        (Some((_, m)), _) => {
            let (a, b) = (arg(m, 0)?, arg(m, 1)?);
            match (scalar(g, a), scalar(g, b)) {
                (_, Some(c)) => (a, c as f32),
                (Some(c), _) => (b, c as f32),
                _ => return None,
            }
        }
        (_, Some((_, d))) => (arg(d, 0)?, 1.0 / scalar(g, arg(d, 1)?)? as f32),
        _ => (s, 1.0),
    };
    let (_, qk) = def_op(g, scaled, "MatMul")?;
    // ...and optional scales on each operand (TorchScript's sdpa splits
    // sqrt(scale) between q and k).
    let peel = |v: ValueId| -> (ValueId, f32) {
        def_op(g, v, "Mul")
            .and_then(|(_, m)| {
                let (a, b) = (arg(m, 0)?, arg(m, 1)?);
                match (scalar(g, a), scalar(g, b)) {
                    (_, Some(c)) => Some((a, c as f32)),
                    (Some(c), _) => Some((b, c as f32)),
                    _ => None,
                }
            })
            .unwrap_or((v, 1.0))
    };
    let ((q, sq), (kt, sk)) = (peel(arg(qk, 0)?), peel(arg(qk, 1)?));
    scale *= sq * sk;
    if scale == 1.0 && def_op(g, s, "Mul").is_none() && sq == 1.0 && sk == 1.0 {
        // Unscaled scores are not an attention we recognize.
        return None;
    }
    let (_, tr) = def_op(g, kt, "Transpose")?;
    let perm = tr.ints("perm")?.to_vec();
    let k = arg(tr, 0)?;
    // K^T from [B, H, S, D] (perm 0,1,3,2) or from [B, S, H, D] (perm 0,2,3,1).
    let bshd = match perm.as_slice() {
        [0, 1, 3, 2] => false,
        [0, 2, 3, 1] => true,
        _ => return None,
    };
    for x in [q, k, v] {
        if shape(g, x)?.len() != 4 {
            return None;
        }
    }
    Some((q, unrepeat(g, k), bshd, unrepeat(g, v), mask, scale))
}

/// `Transpose(x, [0, 2, 1, 3])`: [B, S, H, D] <-> [B, H, S, D].
fn swap_heads(g: &mut Graph, x: ValueId, name: &str) -> ValueId {
    let ty = g.value(x).ty.clone().map(|mut t| {
        if let Some(s) = &mut t.shape {
            s.swap(1, 2);
        }
        t
    });
    let mut attrs = BTreeMap::new();
    attrs.insert("perm".into(), Attr::Ints(vec![0, 2, 1, 3]));
    let (_, o) = g.add_node(
        lpc_ir::NewNode {
            name: name.to_string(),
            op: "Transpose".into(),
            attrs,
            inputs: vec![Some(x)],
        },
        vec![(format!("{name}/out"), ty)],
    );
    o[0]
}

fn int_const(g: &mut Graph, name: String, v: &[i64], scalar_shape: bool) -> ValueId {
    let dims = if scalar_shape { vec![] } else { vec![v.len()] };
    g.add_const(name, Tensor::from_i64(dims, v))
}

fn add(
    g: &mut Graph,
    name: String,
    op: &str,
    attrs: BTreeMap<String, Attr>,
    inputs: Vec<Option<ValueId>>,
    n_out: usize,
) -> Vec<ValueId> {
    let outs = (0..n_out).map(|k| (format!("{name}:{k}"), None)).collect();
    g.add_node(
        lpc_ir::NewNode {
            name,
            op: op.to_string(),
            attrs,
            inputs,
        },
        outs,
    )
    .1
}

/// GroupQueryAttention (separate q/k/v, no bias, window or softcap) ->
/// `lpc.rope` on q and k at positions `seqlens_k[b] + 1 - S + s` (or the
/// given position_ids) and `lpc.attention(q, k, v, _, past_k, past_v,
/// seqlens_k)`, which keeps GroupQueryAttention's cache semantics exactly.
fn rewrite_gqa(g: &mut Graph, n: NodeId) -> Option<()> {
    let node = g.node(n).clone();
    let a = |k: usize| node.inputs.get(k).copied().flatten();
    let plain = a(1).is_some()
        && a(2).is_some()
        && a(10).is_none()
        && a(11).is_none()
        && node.int("local_window_size").unwrap_or(-1) < 0
        && node.float("softcap").unwrap_or(0.0) == 0.0
        && node.int("smooth_softmax").unwrap_or(0) == 0;
    if !plain {
        return None;
    }
    let (hq, hkv) = (node.int("num_heads")?, node.int("kv_num_heads")?);
    let (q, k, v, seqlens) = (a(0)?, a(1)?, a(2)?, a(5)?);
    let name = node.name.clone();
    let (mut q, mut k) = (q, k);
    if node.int("do_rotary").unwrap_or(0) != 0 {
        let (cos, sin) = (a(7)?, a(8)?);
        let rot = 2 * *g.constant(cos)?.dims.get(1)? as i64;
        let pos = match a(9) {
            Some(p) => p,
            None => {
                // pos[b, s] = seqlens_k[b] + 1 - S + s
                let mut to = BTreeMap::new();
                to.insert("to".to_string(), Attr::Int(7));
                let sk = add(
                    g,
                    format!("{name}/seqlens_i64"),
                    "Cast",
                    to,
                    vec![Some(seqlens)],
                    1,
                )[0];
                let shape = add(
                    g,
                    format!("{name}/q_shape"),
                    "Shape",
                    BTreeMap::new(),
                    vec![Some(q)],
                    1,
                )[0];
                let one_idx = int_const(g, format!("{name}/one_idx"), &[1], true);
                let mut ax0 = BTreeMap::new();
                ax0.insert("axis".to_string(), Attr::Int(0));
                let s_len = add(
                    g,
                    format!("{name}/new_tokens"),
                    "Gather",
                    ax0,
                    vec![Some(shape), Some(one_idx)],
                    1,
                )[0];
                let zero = int_const(g, format!("{name}/zero"), &[0], true);
                let one = int_const(g, format!("{name}/one"), &[1], true);
                let steps = add(
                    g,
                    format!("{name}/steps"),
                    "Range",
                    BTreeMap::new(),
                    vec![Some(zero), Some(s_len), Some(one)],
                    1,
                )[0];
                let sk1 = add(
                    g,
                    format!("{name}/total"),
                    "Add",
                    BTreeMap::new(),
                    vec![Some(sk), Some(one)],
                    1,
                )[0];
                let base = add(
                    g,
                    format!("{name}/past"),
                    "Sub",
                    BTreeMap::new(),
                    vec![Some(sk1), Some(s_len)],
                    1,
                )[0];
                let ax1 = int_const(g, format!("{name}/axis1"), &[1], false);
                let ax0c = int_const(g, format!("{name}/axis0"), &[0], false);
                let base2 = add(
                    g,
                    format!("{name}/past_col"),
                    "Unsqueeze",
                    BTreeMap::new(),
                    vec![Some(base), Some(ax1)],
                    1,
                )[0];
                let steps2 = add(
                    g,
                    format!("{name}/steps_row"),
                    "Unsqueeze",
                    BTreeMap::new(),
                    vec![Some(steps), Some(ax0c)],
                    1,
                )[0];
                add(
                    g,
                    format!("{name}/positions"),
                    "Add",
                    BTreeMap::new(),
                    vec![Some(base2), Some(steps2)],
                    1,
                )[0]
            }
        };
        let rope = |g: &mut Graph, x: ValueId, heads: i64, tag: &str| {
            let mut at = BTreeMap::new();
            at.insert(
                "interleaved".to_string(),
                Attr::Int(node.int("rotary_interleaved").unwrap_or(0)),
            );
            at.insert("num_heads".to_string(), Attr::Int(heads));
            at.insert("rotary_embedding_dim".to_string(), Attr::Int(rot));
            add(
                g,
                format!("{name}/rope_{tag}"),
                "lpc.rope",
                at,
                vec![Some(x), Some(cos), Some(sin), Some(pos)],
                1,
            )[0]
        };
        q = rope(g, q, hq, "q");
        k = rope(g, k, hkv, "k");
    }
    let mut at = BTreeMap::new();
    at.insert("q_num_heads".to_string(), Attr::Int(hq));
    at.insert("kv_num_heads".to_string(), Attr::Int(hkv));
    at.insert("is_causal".to_string(), Attr::Int(1));
    if let Some(s) = node.float("scale").filter(|&s| s != 0.0) {
        at.insert("scale".to_string(), Attr::Float(s));
    }
    let outs: Vec<(String, Option<lpc_ir::Type>)> = node
        .outputs
        .iter()
        .map(|&o| {
            let v = g.value(o);
            (v.name.clone(), v.ty.clone())
        })
        .collect();
    for &o in &node.outputs {
        let nm = g.value(o).name.clone();
        g.value_mut(o).name = format!("{nm}#replaced");
    }
    let (_, new) = g.add_node(
        lpc_ir::NewNode {
            name: name.clone(),
            op: "lpc.attention".into(),
            attrs: at,
            inputs: vec![Some(q), Some(k), Some(v), None, a(3), a(4), Some(seqlens)],
        },
        outs,
    );
    for (&o, &nv) in node.outputs.iter().zip(&new) {
        g.replace_uses(o, nv);
    }
    g.remove_node(n);
    Some(())
}

impl Pass for FuseAttention {
    fn name(&self) -> &'static str {
        "fuse-attention"
    }
    fn summary(&self) -> &'static str {
        "RoPE and attention spellings to lpc.rope and lpc.attention"
    }
    fn run(&self, g: &mut Graph) -> Result<bool, String> {
        let order = crate::util::topo(g)?;
        let mut changed = false;
        for n in order {
            if !g.contains_node(n) {
                continue;
            }
            let node = g.node(n).clone();
            match node.op.as_str() {
                "RotaryEmbedding" => {
                    replace_value(
                        g,
                        node.outputs[0],
                        node.name,
                        "lpc.rope",
                        node.attrs.clone(),
                        node.inputs.clone(),
                    );
                    changed = true;
                }
                "Add" => {
                    if let Some((x, ct, st, half)) = match_rotate_half(g, n) {
                        let c = slice_last(g, ct, half, &format!("{}/cos_half", node.name));
                        let s = slice_last(g, st, half, &format!("{}/sin_half", node.name));
                        let mut attrs = BTreeMap::new();
                        attrs.insert("interleaved".into(), Attr::Int(0));
                        replace_value(
                            g,
                            node.outputs[0],
                            node.name,
                            "lpc.rope",
                            attrs,
                            vec![Some(x), Some(c), Some(s)],
                        );
                        changed = true;
                    }
                }
                "Attention" => {
                    let plain = node.inputs.len() <= 4
                        && node.outputs[1..].iter().all(|&o| crate::util::unused(g, o))
                        && node.float("softcap").unwrap_or(0.0) == 0.0
                        && node.int("qk_matmul_output_mode").unwrap_or(0) == 0
                        && node.inputs[..3]
                            .iter()
                            .all(|v| v.and_then(|v| shape(g, v)).is_some_and(|s| s.len() == 4));
                    if plain {
                        let (q, k, v) = (
                            node.inputs[0],
                            node.inputs[1].map(|k| unrepeat(g, k)),
                            node.inputs[2].map(|v| unrepeat(g, v)),
                        );
                        let mut attrs = BTreeMap::new();
                        if let Some(s) = node.float("scale") {
                            attrs.insert("scale".into(), Attr::Float(s));
                        }
                        attrs.insert(
                            "is_causal".into(),
                            Attr::Int(node.int("is_causal").unwrap_or(0)),
                        );
                        let mut inputs = vec![q, k, v];
                        if let Some(m) = node.inputs.get(3).copied().flatten() {
                            inputs.push(Some(m));
                        }
                        replace_value(
                            g,
                            node.outputs[0],
                            node.name,
                            "lpc.attention",
                            attrs,
                            inputs,
                        );
                        changed = true;
                    }
                }
                "com.microsoft.GroupQueryAttention" => {
                    if let Some(()) = rewrite_gqa(g, n) {
                        changed = true;
                    }
                }
                "MatMul" => {
                    if let Some((q, k, bshd, v, mask, scale)) = match_sdpa(g, n) {
                        let k = if bshd {
                            swap_heads(g, k, &format!("{}/k_bhsd", node.name))
                        } else {
                            k
                        };
                        let mut attrs = BTreeMap::new();
                        attrs.insert("scale".into(), Attr::Float(scale));
                        attrs.insert("is_causal".into(), Attr::Int(0));
                        let mut inputs = vec![Some(q), Some(k), Some(v)];
                        if mask.is_some() {
                            inputs.push(mask);
                        }
                        replace_value(
                            g,
                            node.outputs[0],
                            node.name,
                            "lpc.attention",
                            attrs,
                            inputs,
                        );
                        changed = true;
                    }
                }
                _ => {}
            }
        }
        Ok(changed)
    }
}
