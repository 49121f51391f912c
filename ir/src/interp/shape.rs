//! Shape and data-movement ops. Each one computes, for every output element,
//! the input element it copies (`take`), which keeps them obviously correct.

use super::util::{axis, broadcast_index, broadcast_shapes, strides};
use super::value::{Data, TensorValue};
use super::{OpCtx, R};
use crate::Attr;

fn take(d: &Data, idx: impl Iterator<Item = usize>) -> Data {
    match d {
        Data::F(v) => Data::F(idx.map(|i| v[i]).collect()),
        Data::I(v) => Data::I(idx.map(|i| v[i]).collect()),
        Data::B(v) => Data::B(idx.map(|i| v[i]).collect()),
    }
}

fn with_shape(a: &TensorValue, shape: Vec<usize>, data: Data) -> TensorValue {
    TensorValue::with_dtype(a.dtype, shape, data)
}

/// Axes from the `axes` operand (opset 13+) or attribute.
fn axes_of(c: &OpCtx, input: usize) -> R<Option<Vec<i64>>> {
    if let Some(v) = c.opt(input) {
        return Ok(Some(v.as_i64().ok_or("axes must be integers")?.to_vec()));
    }
    Ok(c.node.ints("axes").map(|a| a.to_vec()))
}

pub fn shape(c: &OpCtx) -> R<Vec<TensorValue>> {
    let a = c.input(0)?;
    let r = a.rank() as i64;
    let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let start = clamp(c.int("start", 0));
    let end = clamp(c.int("end", r));
    let dims: Vec<i64> = a.shape[start..end.max(start)]
        .iter()
        .map(|&d| d as i64)
        .collect();
    Ok(vec![TensorValue::i64(vec![dims.len()], dims)])
}

pub fn reshape(c: &OpCtx) -> R<Vec<TensorValue>> {
    let a = c.input(0)?;
    let spec = c.ints_in(1)?;
    let allowzero = c.int("allowzero", 0) != 0;
    let mut out: Vec<Option<usize>> = Vec::with_capacity(spec.len());
    for (i, &s) in spec.iter().enumerate() {
        out.push(match s {
            -1 => None,
            0 if !allowzero => Some(
                *a.shape
                    .get(i)
                    .ok_or("0 in shape refers past the input's rank")?,
            ),
            s if s >= 0 => Some(s as usize),
            s => return Err(format!("bad shape entry {s}")),
        });
    }
    let known: usize = out.iter().flatten().product();
    let n = a.len();
    let unknown = out.iter().filter(|d| d.is_none()).count();
    let shape: Vec<usize> = match unknown {
        0 => out.into_iter().flatten().collect(),
        1 if known > 0 && n % known == 0 => {
            out.into_iter().map(|d| d.unwrap_or(n / known)).collect()
        }
        _ => return Err(format!("cannot reshape {:?} to {spec:?}", a.shape)),
    };
    if shape.iter().product::<usize>() != n {
        return Err(format!(
            "cannot reshape {:?} ({n} elements) to {shape:?}",
            a.shape
        ));
    }
    Ok(vec![with_shape(a, shape, a.data.clone())])
}

pub fn flatten(c: &OpCtx) -> R<Vec<TensorValue>> {
    let a = c.input(0)?;
    let r = a.rank() as i64;
    let k = c.int("axis", 1);
    let k = if k < 0 { k + r } else { k };
    if !(0..=r).contains(&k) {
        return Err(format!("axis {k} is out of range"));
    }
    let outer: usize = a.shape[..k as usize].iter().product();
    Ok(vec![with_shape(
        a,
        vec![outer, a.len() / outer.max(1)],
        a.data.clone(),
    )])
}

pub fn transpose(c: &OpCtx) -> R<Vec<TensorValue>> {
    let a = c.input(0)?;
    let perm: Vec<usize> = match c.node.ints("perm") {
        Some(p) => p.iter().map(|&x| axis(x, a.rank())).collect::<R<_>>()?,
        None => (0..a.rank()).rev().collect(),
    };
    let mut seen = perm.clone();
    seen.sort();
    if seen != (0..a.rank()).collect::<Vec<_>>() {
        return Err(format!(
            "perm {perm:?} is not a permutation of rank {}",
            a.rank()
        ));
    }
    let idx: Vec<usize> = (0..a.len()).collect();
    let (src, shape) = super::util::transpose(&idx, &a.shape, &perm);
    Ok(vec![with_shape(a, shape, take(&a.data, src.into_iter()))])
}

pub fn squeeze(c: &OpCtx) -> R<Vec<TensorValue>> {
    let a = c.input(0)?;
    let axes: Vec<usize> = match axes_of(c, 1)? {
        Some(ax) => ax.iter().map(|&x| axis(x, a.rank())).collect::<R<_>>()?,
        None => (0..a.rank()).filter(|&i| a.shape[i] == 1).collect(),
    };
    for &x in &axes {
        if a.shape[x] != 1 {
            return Err(format!("cannot squeeze axis {x} of size {}", a.shape[x]));
        }
    }
    let shape = (0..a.rank())
        .filter(|i| !axes.contains(i))
        .map(|i| a.shape[i])
        .collect();
    Ok(vec![with_shape(a, shape, a.data.clone())])
}

pub fn unsqueeze(c: &OpCtx) -> R<Vec<TensorValue>> {
    let a = c.input(0)?;
    let ax = axes_of(c, 1)?.ok_or("Unsqueeze needs axes")?;
    let r = a.rank() + ax.len();
    let mut axes: Vec<usize> = ax.iter().map(|&x| axis(x, r)).collect::<R<_>>()?;
    axes.sort();
    axes.dedup();
    if axes.len() != ax.len() {
        return Err("repeated axes".into());
    }
    let mut shape = a.shape.clone();
    for &x in &axes {
        shape.insert(x, 1);
    }
    Ok(vec![with_shape(a, shape, a.data.clone())])
}

pub fn concat(c: &OpCtx) -> R<Vec<TensorValue>> {
    let parts: Vec<&TensorValue> = (0..c.inputs.len()).map(|k| c.input(k)).collect::<R<_>>()?;
    let first = parts[0];
    let k = axis(c.node.int("axis").ok_or("Concat needs axis")?, first.rank())?;
    let mut shape = first.shape.clone();
    shape[k] = 0;
    for p in &parts {
        if p.rank() != first.rank() || (0..p.rank()).any(|i| i != k && p.shape[i] != first.shape[i])
        {
            return Err(format!(
                "shapes {:?} and {:?} do not concatenate on axis {k}",
                first.shape, p.shape
            ));
        }
        shape[k] += p.shape[k];
    }
    let outer: usize = shape[..k].iter().product();
    let inner: usize = shape[k + 1..].iter().product();
    let mut out: Vec<(usize, usize)> = Vec::with_capacity(shape.iter().product());
    for o in 0..outer {
        for (pi, p) in parts.iter().enumerate() {
            let chunk = p.shape[k] * inner;
            out.extend((0..chunk).map(|j| (pi, o * chunk + j)));
        }
    }
    let data = match &first.data {
        Data::F(_) => Data::F(
            out.iter()
                .map(|&(p, i)| parts[p].as_f32().map(|v| v[i]).unwrap_or(0.0))
                .collect(),
        ),
        Data::I(_) => Data::I(
            out.iter()
                .map(|&(p, i)| parts[p].as_i64().map(|v| v[i]).unwrap_or(0))
                .collect(),
        ),
        Data::B(_) => Data::B(
            out.iter()
                .map(|&(p, i)| parts[p].as_bool().map(|v| v[i]).unwrap_or(false))
                .collect(),
        ),
    };
    if parts
        .iter()
        .any(|p| std::mem::discriminant(&p.data) != std::mem::discriminant(&first.data))
    {
        return Err("operands have different element types".into());
    }
    Ok(vec![with_shape(first, shape, data)])
}

/// A sub-block along one axis: `[start, start + len)`.
fn narrow(a: &TensorValue, k: usize, start: usize, len: usize) -> TensorValue {
    let outer: usize = a.shape[..k].iter().product();
    let inner: usize = a.shape[k + 1..].iter().product();
    let d = a.shape[k];
    let idx = (0..outer).flat_map(move |o| {
        (start..start + len).flat_map(move |j| (0..inner).map(move |i| (o * d + j) * inner + i))
    });
    let mut shape = a.shape.clone();
    shape[k] = len;
    with_shape(a, shape, take(&a.data, idx))
}

pub fn split(c: &OpCtx) -> R<Vec<TensorValue>> {
    let a = c.input(0)?;
    let k = axis(c.int("axis", 0), a.rank())?;
    let n = c.node.outputs.len();
    let d = a.shape[k];
    let sizes: Vec<usize> = if let Some(s) = c.opt(1) {
        s.as_i64()
            .ok_or("split must be integers")?
            .iter()
            .map(|&x| x as usize)
            .collect()
    } else if let Some(s) = c.node.ints("split") {
        s.iter().map(|&x| x as usize).collect()
    } else {
        let parts = c.node.int("num_outputs").map_or(n, |v| v as usize);
        let chunk = d.div_ceil(parts.max(1));
        (0..parts)
            .map(|i| chunk.min(d.saturating_sub(i * chunk)))
            .collect()
    };
    if sizes.iter().sum::<usize>() != d || sizes.len() != n {
        return Err(format!(
            "split {sizes:?} does not divide axis {k} of size {d} into {n} outputs"
        ));
    }
    let mut start = 0;
    Ok(sizes
        .iter()
        .map(|&len| {
            let t = narrow(a, k, start, len);
            start += len;
            t
        })
        .collect())
}

pub fn slice(c: &OpCtx) -> R<Vec<TensorValue>> {
    let a = c.input(0)?;
    let starts = c.ints_in(1)?;
    let ends = c.ints_in(2)?;
    let axes: Vec<usize> = match c.opt(3) {
        Some(v) => v
            .as_i64()
            .ok_or("axes must be integers")?
            .iter()
            .map(|&x| axis(x, a.rank()))
            .collect::<R<_>>()?,
        None => (0..starts.len()).collect(),
    };
    let steps: Vec<i64> = match c.opt(4) {
        Some(v) => v.as_i64().ok_or("steps must be integers")?.to_vec(),
        None => vec![1; starts.len()],
    };
    if [ends.len(), axes.len(), steps.len()]
        .iter()
        .any(|&l| l != starts.len())
    {
        return Err("starts, ends, axes and steps differ in length".into());
    }
    // Per axis: the list of selected indices.
    let mut sel: Vec<Vec<usize>> = a.shape.iter().map(|&d| (0..d).collect()).collect();
    for i in 0..starts.len() {
        let (k, step) = (axes[i], steps[i]);
        if step == 0 {
            return Err("slice step 0".into());
        }
        let d = a.shape[k] as i64;
        let norm = |v: i64| if v < 0 { v + d } else { v };
        let (s, e) = (norm(starts[i]), norm(ends[i]));
        sel[k] = if step > 0 {
            let (s, e) = (s.clamp(0, d), e.clamp(0, d));
            (s..e).step_by(step as usize).map(|x| x as usize).collect()
        } else {
            let (s, e) = (s.clamp(-1, d - 1), e.clamp(-1, d - 1));
            let mut v = Vec::new();
            let mut x = s;
            while x > e {
                v.push(x as usize);
                x += step;
            }
            v
        };
    }
    let shape: Vec<usize> = sel.iter().map(|s| s.len()).collect();
    let st = strides(&a.shape);
    let mut idx = vec![0usize];
    for (k, s) in sel.iter().enumerate() {
        let stk = st[k];
        idx = idx
            .iter()
            .flat_map(|&b| s.iter().map(move |&j| b + j * stk))
            .collect();
    }
    Ok(vec![with_shape(a, shape, take(&a.data, idx.into_iter()))])
}

pub fn gather(c: &OpCtx) -> R<Vec<TensorValue>> {
    let (a, ind) = (c.input(0)?, c.input(1)?);
    let k = axis(c.int("axis", 0), a.rank())?;
    let ids = ind.as_i64().ok_or("indices must be integers")?;
    let d = a.shape[k] as i64;
    let ids: Vec<usize> = ids
        .iter()
        .map(|&i| {
            let j = if i < 0 { i + d } else { i };
            if (0..d).contains(&j) {
                Ok(j as usize)
            } else {
                Err(format!(
                    "index {i} is out of range for axis {k} of size {d}"
                ))
            }
        })
        .collect::<R<_>>()?;
    let outer: usize = a.shape[..k].iter().product();
    let inner: usize = a.shape[k + 1..].iter().product();
    let du = d as usize;
    let idx = (0..outer).flat_map(|o| {
        ids.iter()
            .flat_map(move |&j| (0..inner).map(move |i| (o * du + j) * inner + i))
    });
    let mut shape = a.shape[..k].to_vec();
    shape.extend(&ind.shape);
    shape.extend(&a.shape[k + 1..]);
    Ok(vec![with_shape(a, shape, take(&a.data, idx))])
}

pub fn expand(c: &OpCtx) -> R<Vec<TensorValue>> {
    let a = c.input(0)?;
    let target: Vec<usize> = c.ints_in(1)?.iter().map(|&d| d.max(0) as usize).collect();
    let shape = broadcast_shapes(&[&a.shape, &target])?;
    let idx = broadcast_index(&a.shape, &shape);
    Ok(vec![with_shape(a, shape, take(&a.data, idx.into_iter()))])
}

pub fn constant_of_shape(c: &OpCtx) -> R<Vec<TensorValue>> {
    let shape: Vec<usize> = c.ints_in(0)?.iter().map(|&d| d.max(0) as usize).collect();
    let n: usize = shape.iter().product();
    let v = match c.node.attr("value") {
        Some(Attr::Tensor(t)) => TensorValue::from_tensor(t),
        None => TensorValue::f32(vec![1], vec![0.0]),
        _ => return Err("value must be a tensor".into()),
    };
    if v.len() != 1 {
        return Err("value must have one element".into());
    }
    let data = take(&v.data, std::iter::repeat_n(0, n));
    Ok(vec![TensorValue::with_dtype(v.dtype, shape, data)])
}

pub fn range(c: &OpCtx) -> R<Vec<TensorValue>> {
    let (s, l, d) = (c.input(0)?, c.input(1)?, c.input(2)?);
    match (&s.data, &l.data, &d.data) {
        (Data::I(s), Data::I(l), Data::I(d)) => {
            let (s, l, d) = (s[0], l[0], d[0]);
            if d == 0 {
                return Err("delta is 0".into());
            }
            let n = ((l - s) as f64 / d as f64).ceil().max(0.0) as usize;
            let v: Vec<i64> = (0..n as i64).map(|i| s + i * d).collect();
            Ok(vec![TensorValue::with_dtype(
                c.input(0)?.dtype,
                vec![n],
                Data::I(v),
            )])
        }
        (Data::F(s), Data::F(l), Data::F(d)) => {
            let (s, l, d) = (s[0], l[0], d[0]);
            let n = ((l - s) / d).ceil().max(0.0) as usize;
            let v: Vec<f32> = (0..n).map(|i| s + i as f32 * d).collect();
            Ok(vec![TensorValue::with_dtype(
                c.input(0)?.dtype,
                vec![n],
                Data::F(v),
            )])
        }
        _ => Err("start, limit and delta must share one type".into()),
    }
}

pub fn scatter_nd(c: &OpCtx) -> R<Vec<TensorValue>> {
    let (a, ind, upd) = (c.input(0)?, c.input(1)?, c.input(2)?);
    if c.node.string("reduction").is_some_and(|r| r != "none") {
        return Err("only reduction=none is supported".into());
    }
    let ids = ind.as_i64().ok_or("indices must be integers")?;
    let q = *ind.shape.last().ok_or("indices must have rank >= 1")?;
    if q > a.rank() {
        return Err("index depth exceeds the data rank".into());
    }
    let st = strides(&a.shape);
    let slice: usize = a.shape[q..].iter().product();
    let count = ids.len() / q.max(1);
    if upd.len() != count * slice {
        return Err(format!(
            "updates have {} elements, expected {}",
            upd.len(),
            count * slice
        ));
    }
    let mut src: Vec<(bool, usize)> = (0..a.len()).map(|i| (false, i)).collect();
    for j in 0..count {
        let mut base = 0usize;
        for (k, &i) in ids[j * q..j * q + q].iter().enumerate() {
            let d = a.shape[k] as i64;
            let i = if i < 0 { i + d } else { i };
            if !(0..d).contains(&i) {
                return Err(format!("index {i} is out of range for axis {k}"));
            }
            base += i as usize * st[k];
        }
        for s in 0..slice {
            src[base + s] = (true, j * slice + s);
        }
    }
    let data = match (&a.data, &upd.data) {
        (Data::F(x), Data::F(u)) => Data::F(
            src.iter()
                .map(|&(f, i)| if f { u[i] } else { x[i] })
                .collect(),
        ),
        (Data::I(x), Data::I(u)) => Data::I(
            src.iter()
                .map(|&(f, i)| if f { u[i] } else { x[i] })
                .collect(),
        ),
        (Data::B(x), Data::B(u)) => Data::B(
            src.iter()
                .map(|&(f, i)| if f { u[i] } else { x[i] })
                .collect(),
        ),
        _ => return Err("data and updates differ in type".into()),
    };
    Ok(vec![with_shape(a, a.shape.clone(), data)])
}
