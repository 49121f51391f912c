//! ONNX model -> IR graph.
//!
//! Kept faithfully: every node with its op (domain-qualified outside ai.onnx),
//! attributes, operand order and omitted optional operands; the types and
//! symbolic shapes the exporter wrote. Two normalisations only: `Constant`
//! nodes become IR constants, and initializers that older exporters also list
//! as graph inputs are constants, not inputs.

use super::proto::{self, attribute_type as at};
use super::{ExternalData, OnnxError, OnnxModel};
use bytes::Bytes;
use lpc_ir::{Attr, DType, Dim, Graph, NewNode, Tensor, Type, ValueId};
use std::collections::{BTreeMap, HashMap};

/// The newest ai.onnx opset lpc knows.
pub const MAX_OPSET: i64 = 23;

fn dtype(code: i32) -> Result<DType, String> {
    DType::from_onnx_code(code).ok_or_else(|| format!("element type code {code} is not supported"))
}

/// Converts a tensor; `raw_data` and external data stay zero-copy.
pub(crate) fn tensor(t: &proto::TensorProto, ext: &mut ExternalData) -> Result<Tensor, String> {
    let dt = dtype(t.data_type)?;
    let dims = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("negative dimension {d}")))
        .collect::<Result<Vec<_>, _>>()?;
    let n = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("the element count overflows")?;
    let want = dt.bytes_for(n);
    let data: Bytes = if t.data_location == proto::DATA_LOCATION_EXTERNAL {
        let get = |k: &str| {
            t.external_data
                .iter()
                .find(|e| e.key == k)
                .map(|e| e.value.as_str())
        };
        let location = get("location").ok_or("external data without a location")?;
        let num = |k: &str| -> Result<Option<usize>, String> {
            get(k)
                .map(|v| {
                    v.parse()
                        .map_err(|_| format!("bad external data {k} `{v}`"))
                })
                .transpose()
        };
        let offset = num("offset")?.unwrap_or(0);
        ext.slice(location, offset, Some(num("length")?.unwrap_or(want)))?
    } else if !t.raw_data.is_empty() {
        t.raw_data.clone()
    } else {
        let v: Vec<u8> = match dt {
            DType::F32 => t.float_data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            DType::F64 => t.double_data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            DType::I64 => t.int64_data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            DType::I32 => t.int32_data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            DType::F16 | DType::Bf16 => t
                .int32_data
                .iter()
                .flat_map(|&x| (x as u16).to_le_bytes())
                .collect(),
            DType::I8 | DType::U8 | DType::Bool => t.int32_data.iter().map(|&x| x as u8).collect(),
            DType::I4 | DType::U4 => t.int32_data.iter().map(|&x| x as u8).collect(),
        };
        v.into()
    };
    if data.len() != want {
        return Err(format!(
            "has {} bytes of data, but {dt}{dims:?} needs {want}",
            data.len()
        ));
    }
    Tensor::new(dt, dims, data).ok_or_else(|| "inconsistent tensor".to_string())
}

fn value_type(v: &proto::ValueInfoProto) -> Option<Type> {
    use proto::tensor_shape_proto::dimension::Value as D;
    use proto::type_proto::Value;
    let Some(Value::TensorType(t)) = v.r#type.as_ref()?.value.as_ref() else {
        return None;
    };
    let dtype = DType::from_onnx_code(t.elem_type)?;
    let shape = t.shape.as_ref().map(|s| {
        s.dim
            .iter()
            .map(|d| match &d.value {
                Some(D::DimValue(n)) if *n >= 0 => Dim::Fixed(*n as usize),
                Some(D::DimParam(p)) if !p.is_empty() => Dim::Sym(p.clone()),
                _ => Dim::Unknown,
            })
            .collect()
    });
    Some(Type { dtype, shape })
}

fn attribute(a: &proto::AttributeProto, ext: &mut ExternalData) -> Result<Attr, String> {
    let text = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
    Ok(match a.r#type {
        at::INT => Attr::Int(a.i),
        at::FLOAT => Attr::Float(a.f),
        at::STRING => Attr::String(text(&a.s)),
        at::INTS => Attr::Ints(a.ints.clone()),
        at::FLOATS => Attr::Floats(a.floats.clone()),
        at::STRINGS => Attr::Strings(a.strings.iter().map(text).collect()),
        at::TENSOR => Attr::Tensor(tensor(
            a.t.as_ref().ok_or("TENSOR attribute without a tensor")?,
            ext,
        )?),
        at::GRAPH | at::GRAPHS => {
            return Err(format!(
                "attribute `{}` is a subgraph (control flow is not supported)",
                a.name
            ))
        }
        at::TENSORS | at::SPARSE_TENSOR | at::SPARSE_TENSORS | at::TYPE_PROTO | at::TYPE_PROTOS => {
            return Err(format!(
                "attribute `{}` has a type lpc does not support ({})",
                a.name, a.r#type
            ))
        }
        t => return Err(format!("attribute `{}` has unknown type {t}", a.name)),
    })
}

/// The tensor a `Constant` node defines.
fn constant_value(node: &proto::NodeProto, ext: &mut ExternalData) -> Result<Tensor, String> {
    let a = node
        .attribute
        .first()
        .filter(|_| node.attribute.len() == 1)
        .ok_or("Constant needs exactly one attribute")?;
    Ok(match a.name.as_str() {
        "value" => tensor(a.t.as_ref().ok_or("value without a tensor")?, ext)?,
        "value_float" => Tensor::from_f32(vec![], &[a.f]),
        "value_floats" => Tensor::from_f32(vec![a.floats.len()], &a.floats),
        "value_int" => Tensor::from_i64(vec![], &[a.i]),
        "value_ints" => Tensor::from_i64(vec![a.ints.len()], &a.ints),
        other => return Err(format!("Constant attribute `{other}` is not supported")),
    })
}

/// Imports a decoded model into an IR graph.
pub fn import(model: &OnnxModel) -> Result<Graph, OnnxError> {
    let path = model.path.display().to_string();
    let p = &model.proto;
    let gp = p.graph.as_ref().expect("checked at load");
    let mut ext = ExternalData::new(&model.path);
    let mut g = Graph::new(gp.name.clone());
    for o in &p.opset_import {
        let d = if o.domain == "ai.onnx" {
            ""
        } else {
            o.domain.as_str()
        };
        g.opsets.insert(d.to_string(), o.version);
    }
    if let Some(&v) = g.opsets.get("") {
        if v > MAX_OPSET {
            return Err(OnnxError::Model {
                path,
                msg: format!("ai.onnx opset {v} is newer than lpc supports ({MAX_OPSET})"),
            });
        }
    }

    let mut names: HashMap<String, ValueId> = HashMap::new();
    for t in &gp.initializer {
        let tv = tensor(t, &mut ext).map_err(|msg| OnnxError::Tensor {
            path: path.clone(),
            tensor: t.name.clone(),
            msg,
        })?;
        names.insert(t.name.clone(), g.add_const(t.name.clone(), tv));
    }
    for i in &gp.input {
        if !names.contains_key(&i.name) {
            names.insert(i.name.clone(), g.add_input(i.name.clone(), value_type(i)));
        }
    }
    let mut types: HashMap<&str, Type> = HashMap::new();
    for v in gp.value_info.iter().chain(&gp.output) {
        if let Some(t) = value_type(v) {
            types.insert(v.name.as_str(), t);
        }
    }

    for (idx, n) in gp.node.iter().enumerate() {
        let op = match n.domain.as_str() {
            "" | "ai.onnx" => n.op_type.clone(),
            d => format!("{d}.{}", n.op_type),
        };
        let name = if n.name.is_empty() {
            format!("{op}_{idx}")
        } else {
            n.name.clone()
        };
        let err = |msg: String| OnnxError::Node {
            path: path.clone(),
            node: name.clone(),
            op: op.clone(),
            msg,
        };
        if op == "Constant" {
            let t = constant_value(n, &mut ext).map_err(err)?;
            let out = n
                .output
                .first()
                .ok_or_else(|| err("Constant has no output".into()))?;
            names.insert(out.clone(), g.add_const(out.clone(), t));
            continue;
        }
        let inputs = n
            .input
            .iter()
            .map(|i| {
                if i.is_empty() {
                    Ok(None)
                } else {
                    names
                        .get(i)
                        .copied()
                        .map(Some)
                        .ok_or_else(|| err(format!("input `{i}` is not defined before use")))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut attrs = BTreeMap::new();
        for a in &n.attribute {
            attrs.insert(a.name.clone(), attribute(a, &mut ext).map_err(err)?);
        }
        let outputs: Vec<(String, Option<Type>)> = n
            .output
            .iter()
            .enumerate()
            .map(|(k, o)| {
                if o.is_empty() {
                    (format!("{name}:unused{k}"), None)
                } else {
                    (o.clone(), types.get(o.as_str()).cloned())
                }
            })
            .collect();
        for (o, _) in &outputs {
            if names.contains_key(o) {
                return Err(err(format!("output `{o}` is defined twice")));
            }
        }
        let (_, ids) = g.add_node(
            NewNode {
                name,
                op,
                attrs,
                inputs,
            },
            outputs.clone(),
        );
        for ((o, _), id) in outputs.into_iter().zip(ids) {
            names.insert(o, id);
        }
    }
    for o in &gp.output {
        let id = *names.get(&o.name).ok_or_else(|| OnnxError::Model {
            path: path.clone(),
            msg: format!("graph output `{}` is not defined", o.name),
        })?;
        g.outputs.push(id);
    }
    Ok(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(data_type: i32, dims: Vec<i64>, raw: &[u8]) -> proto::TensorProto {
        proto::TensorProto {
            dims,
            data_type,
            raw_data: Bytes::copy_from_slice(raw),
            ..Default::default()
        }
    }

    #[test]
    fn four_bit_tensors_unpack_low_nibble_first() {
        let mut ext = ExternalData::default();
        // 3 elements in 2 bytes: 0x9 | 0x7 << 4, 0x1.
        let t = tensor(&tp(22, vec![3], &[0x79, 0x01]), &mut ext).unwrap();
        assert_eq!((t.dtype, t.to_f64_vec()), (DType::I4, vec![-7.0, 7.0, 1.0]));
        let t = tensor(&tp(21, vec![3], &[0x79, 0x01]), &mut ext).unwrap();
        assert_eq!((t.dtype, t.to_f64_vec()), (DType::U4, vec![9.0, 7.0, 1.0]));
        let e = tensor(&tp(22, vec![5], &[0x79, 0x01]), &mut ext).unwrap_err();
        assert!(e.contains("needs 3"), "{e}");
    }

    #[test]
    fn half_types_from_raw_and_typed_fields() {
        let mut ext = ExternalData::default();
        let h = half::f16::from_f32(1.5).to_bits();
        let t = tensor(&tp(10, vec![1], &h.to_le_bytes()), &mut ext).unwrap();
        assert_eq!(t.to_f64_vec(), vec![1.5]);
        let b = proto::TensorProto {
            dims: vec![2],
            data_type: 16,
            int32_data: vec![half::bf16::from_f32(-2.0).to_bits() as i32, 0x3F80],
            ..Default::default()
        };
        assert_eq!(tensor(&b, &mut ext).unwrap().to_f64_vec(), vec![-2.0, 1.0]);
        let unknown = tp(8, vec![1], &[0]);
        assert!(tensor(&unknown, &mut ext)
            .unwrap_err()
            .contains("element type code 8"));
    }
}
