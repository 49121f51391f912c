"""Generates single-op test cases with onnxruntime's outputs as references.

Writes tests/fixtures/ops/<case>/{model.onnx, inputs/<name>.npy, ref_ort/<name>.npy}.
The Rust suite (tests/tests/suite/op_cases.rs) runs every case through lpc's interpreter;
it never needs Python. Re-run by hand after adding a case:

    python3 -m venv /tmp/v && /tmp/v/bin/pip install numpy onnx onnxruntime
    /tmp/v/bin/python tools/gen_op_cases.py
"""

import os
import shutil

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "ops")
rng = np.random.default_rng(2026)
NP2ONNX = {np.float32: TensorProto.FLOAT, np.int64: TensorProto.INT64, np.bool_: TensorProto.BOOL,
           np.int32: TensorProto.INT32}


def f32(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def case(name, op, inputs, attrs=None, n_out=1, domain="", opset=23, consts=None, out_names=None):
    """inputs: list of (name, array or None for omitted); consts: name -> array initializers."""
    consts = consts or {}
    in_names = [n if a is not None or n in consts else "" for n, a in inputs]
    outs = out_names or [f"y{i}" for i in range(n_out)]
    node = helper.make_node(op, in_names, outs, domain=domain or None, **(attrs or {}))
    g_inputs = [helper.make_tensor_value_info(n, NP2ONNX[a.dtype.type], a.shape)
                for n, a in inputs if a is not None and n not in consts]
    g_outputs = [helper.make_empty_tensor_value_info(o) for o in outs]
    inits = [onnx.numpy_helper.from_array(a, n) for n, a in consts.items()]
    graph = helper.make_graph([node], name, g_inputs, g_outputs, inits)
    opsets = [helper.make_opsetid("", opset)]
    if domain:
        opsets.append(helper.make_opsetid(domain, 1))
    model = helper.make_model(graph, opset_imports=opsets, producer_name="lpc gen_op_cases")
    model.ir_version = 10
    # Output types from ONNX shape inference (float for contrib ops it does not know).
    inferred = onnx.shape_inference.infer_shapes(model)
    known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for o in model.graph.output:
        t = known.get(o.name)
        if t is not None and t.type.tensor_type.elem_type:
            o.type.CopyFrom(t.type)
        else:
            o.type.tensor_type.elem_type = TensorProto.FLOAT
    feeds = {n: a for n, a in inputs if a is not None and n not in consts}
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    res = sess.run(outs, feeds)
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(os.path.join(d, "inputs"))
    os.makedirs(os.path.join(d, "ref_ort"))
    onnx.save(model, os.path.join(d, "model.onnx"))
    for n, a in feeds.items():
        np.save(os.path.join(d, "inputs", n + ".npy"), a)
    for n, a in zip(outs, res):
        np.save(os.path.join(d, "ref_ort", n + ".npy"), a)


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    x = f32(2, 3, 4)
    for op in ["Abs", "Neg", "Exp", "Sin", "Cos", "Tanh", "Sigmoid", "Erf", "Relu", "Floor", "Ceil", "Softplus"]:
        case(f"unary_{op.lower()}", op, [("x", x)])
    xp = np.abs(x) + 0.1
    for op in ["Sqrt", "Log", "Reciprocal"]:
        case(f"unary_{op.lower()}", op, [("x", xp)])
    case("gelu_none", "Gelu", [("x", x)], opset=20)
    case("gelu_tanh", "Gelu", [("x", x)], {"approximate": "tanh"}, opset=20)
    a, b = f32(2, 1, 4), f32(3, 1)
    for op in ["Add", "Sub", "Mul", "Div", "Max", "Min"]:
        case(f"binary_{op.lower()}_broadcast", op, [("a", a), ("b", b)])
    case("pow", "Pow", [("a", np.abs(a) + 0.5), ("b", b)])
    ia, ib = rng.integers(-9, 9, (2, 5)).astype(np.int64), np.array([3, -4, 5, 7, -2], np.int64)
    for op in ["Add", "Sub", "Mul", "Div"]:
        case(f"int_{op.lower()}", op, [("a", ia), ("b", ib)])
    case("mod_int", "Mod", [("a", ia), ("b", ib)])
    case("mod_fmod", "Mod", [("a", a), ("b", b)], {"fmod": 1})
    for op in ["Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual"]:
        case(f"compare_{op.lower()}", op, [("a", ia), ("b", ib)])
    ba, bb = rng.integers(0, 2, (3, 4)).astype(bool), rng.integers(0, 2, (4,)).astype(bool)
    for op in ["And", "Or", "Xor"]:
        case(f"logic_{op.lower()}", op, [("a", ba), ("b", bb)])
    case("not", "Not", [("a", ba)])
    case("where", "Where", [("c", ba), ("x", f32(3, 4)), ("y", f32(4))])
    case("cast_f32_to_i64", "Cast", [("x", x * 3)], {"to": TensorProto.INT64})
    case("cast_i64_to_f32", "Cast", [("x", ia)], {"to": TensorProto.FLOAT})
    case("cast_f32_to_f16_to", "Cast", [("x", x * 1000)], {"to": TensorProto.FLOAT16})
    x4 = f32(2, 3, 4, 5)
    case("shape_slice", "Shape", [("x", x4)], {"start": 1, "end": -1})
    case("reshape_zero_minus_one", "Reshape", [("x", x4), ("s", np.array([0, -1, 5], np.int64))],
         consts={"s": np.array([0, -1, 5], np.int64)})
    case("flatten", "Flatten", [("x", x4)], {"axis": 2})
    case("transpose", "Transpose", [("x", x4)], {"perm": [2, 0, 3, 1]})
    case("squeeze", "Squeeze", [("x", f32(2, 1, 3, 1)), ("a", np.array([1, -1], np.int64))],
         consts={"a": np.array([1, -1], np.int64)})
    case("unsqueeze", "Unsqueeze", [("x", f32(2, 3)), ("a", np.array([0, 3], np.int64))],
         consts={"a": np.array([0, 3], np.int64)})
    case("concat", "Concat", [("a", f32(2, 3, 4)), ("b", f32(2, 1, 4))], {"axis": -2})
    case("split_sizes", "Split", [("x", f32(2, 7)), ("s", np.array([2, 5], np.int64))], {"axis": 1}, n_out=2,
         consts={"s": np.array([2, 5], np.int64)})
    case("split_uneven", "Split", [("x", f32(7, 2))], {"axis": 0, "num_outputs": 3}, n_out=3, opset=18)
    sl = {"st": np.array([1, -1], np.int64), "en": np.array([100, -4], np.int64),
          "ax": np.array([1, 3], np.int64), "sp": np.array([1, -2], np.int64)}
    case("slice_neg_step", "Slice", [("x", x4)] + [(k, v) for k, v in sl.items()], consts=sl)
    case("gather_axis1_neg", "Gather", [("x", x4), ("i", np.array([[0, -1], [2, 1]], np.int64))], {"axis": 1})
    case("expand", "Expand", [("x", f32(3, 1)), ("s", np.array([2, 1, 4], np.int64))],
         consts={"s": np.array([2, 1, 4], np.int64)})
    case("constant_of_shape", "ConstantOfShape", [("s", np.array([2, 3], np.int64))],
         {"value": helper.make_tensor("v", TensorProto.INT64, [1], [7])})
    case("range_int", "Range", [("a", np.array(2, np.int64)), ("b", np.array(11, np.int64)),
                                ("c", np.array(3, np.int64))])
    case("range_float", "Range", [("a", np.array(0.5, np.float32)), ("b", np.array(-2, np.float32)),
                                  ("c", np.array(-0.75, np.float32))])
    case("scatter_nd", "ScatterND", [("x", f32(4, 3)), ("i", np.array([[3], [1]], np.int64)), ("u", f32(2, 3))])
    for op in ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd"]:
        case(f"{op.lower()}_axes", op, [("x", x4), ("a", np.array([1, -1], np.int64))], {"keepdims": 0},
             consts={"a": np.array([1, -1], np.int64)}, opset=18)
    case("reducesum_int_all", "ReduceSum", [("x", ia)], {"keepdims": 1}, opset=18)
    case("softmax_axis1", "Softmax", [("x", x4 * 3)], {"axis": 1})
    case("layer_norm", "LayerNormalization", [("x", x4), ("s", f32(5)), ("b", f32(5))], {"axis": -1, "epsilon": 1e-5})
    case("layer_norm_axis2", "LayerNormalization", [("x", x4), ("s", f32(4, 5))], {"axis": 2})
    case("rms_norm", "RMSNormalization", [("x", x4), ("s", f32(5))], {"epsilon": 1e-6})
    case("simplified_layer_norm", "SimplifiedLayerNormalization", [("x", x4), ("s", f32(5))], {"epsilon": 1e-6})
    case("skip_simplified_layer_norm", "SkipSimplifiedLayerNormalization",
         [("x", f32(2, 3, 8)), ("skip", f32(2, 3, 8)), ("g", f32(8)), ("b", f32(8))], {"epsilon": 1e-6},
         n_out=4, domain="com.microsoft")
    case("matmul_batched_broadcast", "MatMul", [("a", f32(2, 1, 3, 4)), ("b", f32(3, 4, 5))])
    case("matmul_1d", "MatMul", [("a", f32(4)), ("b", f32(2, 4, 3))])
    case("gemm_trans", "Gemm", [("a", f32(4, 3)), ("b", f32(5, 4)), ("c", f32(5))],
         {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0})
    case("conv2d_pad_stride_group", "Conv", [("x", f32(1, 4, 7, 6)), ("w", f32(6, 2, 3, 3)), ("b", f32(6))],
         {"pads": [1, 0, 1, 2], "strides": [2, 1], "dilations": [1, 2], "group": 2})
    case("conv3d_patch", "Conv", [("x", f32(1, 3, 2, 8, 8)), ("w", f32(4, 3, 1, 2, 2))],
         {"strides": [1, 2, 2], "kernel_shape": [1, 2, 2]})
    # Rotary embeddings and attention (opset 23), with the variants the spec allows.
    B, S, H, D = 2, 5, 3, 8
    cos = np.cos(rng.random((B, S, D // 2))).astype(np.float32)
    sin = np.sin(rng.random((B, S, D // 2))).astype(np.float32)
    case("rotary_4d", "RotaryEmbedding", [("x", f32(B, H, S, D)), ("c", cos), ("s", sin)])
    case("rotary_3d_interleaved", "RotaryEmbedding", [("x", f32(B, S, H * D)), ("c", cos), ("s", sin)],
         {"num_heads": H, "interleaved": 1})
    cc = np.cos(rng.random((16, 2))).astype(np.float32)
    sc = np.sin(rng.random((16, 2))).astype(np.float32)
    case("rotary_partial_position_ids", "RotaryEmbedding",
         [("x", f32(B, H, S, D)), ("c", cc), ("s", sc), ("p", rng.integers(0, 16, (B, S)).astype(np.int64))],
         {"rotary_embedding_dim": 4})
    q, k, v = f32(B, 4, S, D), f32(B, 2, 7, D), f32(B, 2, 7, 6)
    case("attention_gqa", "Attention", [("q", q), ("k", k), ("v", v)])
    case("attention_bool_mask", "Attention", [("q", q), ("k", k), ("v", v),
                                                ("m", rng.random((S, 7)) > 0.3)])
    case("attention_float_mask_softcap", "Attention", [("q", q), ("k", k), ("v", v), ("m", f32(B, 1, S, 7))],
         {"softcap": 2.0, "scale": 0.3})
    case("attention_causal_past", "Attention",
         [("q", q), ("k", f32(B, 2, S, D)), ("v", f32(B, 2, S, 6)), ("m", None),
          ("pk", f32(B, 2, 3, D)), ("pv", f32(B, 2, 3, 6))], {"is_causal": 1}, n_out=3)
    case("attention_3d", "Attention", [("q", f32(B, S, 4 * D)), ("k", f32(B, 7, 2 * D)), ("v", f32(B, 7, 2 * D))],
         {"q_num_heads": 4, "kv_num_heads": 2})
    # GroupQueryAttention: prefill and a decode step on a past cache, with rotary.
    for name, s, past, tot in [("gqa_prefill", 4, 0, 4), ("gqa_decode", 1, 4, 5)]:
        nh, kvh, hd = 4, 2, 16
        cos_c = np.cos(np.outer(np.arange(32), 1.0 / 10000 ** (np.arange(0, hd, 2) / hd))).astype(np.float32)
        sin_c = np.sin(np.outer(np.arange(32), 1.0 / 10000 ** (np.arange(0, hd, 2) / hd))).astype(np.float32)
        case(name, "GroupQueryAttention",
             [("q", f32(1, s, nh * hd)), ("k", f32(1, s, kvh * hd)), ("v", f32(1, s, kvh * hd)),
              ("pk", f32(1, kvh, past, hd)), ("pv", f32(1, kvh, past, hd)),
              ("seqlens_k", np.array([tot - 1], np.int32)), ("total", np.array(tot, np.int32)),
              ("cos", cos_c), ("sin", sin_c)],
             {"num_heads": nh, "kv_num_heads": kvh, "do_rotary": 1}, n_out=3, domain="com.microsoft",
             consts={"cos": cos_c, "sin": sin_c})
    # ScatterND with constant indices (compiled as strided stores when the
    # indices are affine): torch's `x[..., 0::2] = a` on a 4-d tensor, whole
    # rows with a negative index, and an irregular order.
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in (1, 4, 2, 4)], indexing="ij"), -1)
    grid[..., 3] = grid[..., 3] * 2 + 1
    case("scatter_nd_const_strided", "ScatterND", [("x", f32(1, 4, 2, 8)), ("i", grid), ("u", f32(1, 4, 2, 4))],
         consts={"i": grid.astype(np.int64)})
    rows = np.array([[1], [-1]], np.int64)
    case("scatter_nd_const_rows", "ScatterND", [("x", f32(4, 3)), ("i", rows), ("u", f32(2, 3))],
         consts={"i": rows})
    perm = np.array([[2, 0], [0, 1], [3, 2]], np.int64)
    case("scatter_nd_const_irregular", "ScatterND", [("x", f32(4, 3)), ("i", perm), ("u", f32(3))],
         consts={"i": perm})
    swiglu_split_case()
    long_attention_cases()
    float_mask_attention_case()


def long_attention_cases():
    """Rows of more than 16 keys with head widths of 16 and 32: the compiled
    kernel's 16-key blocks (scores, scale, bias and maximum in one step) and
    the keys after them, with causal masks over a past cache, a boolean mask
    and a soft cap."""
    b = 2
    case("attention_long_causal_past", "Attention",
         [("q", f32(b, 4, 21, 16)), ("k", f32(b, 2, 21, 16)), ("v", f32(b, 2, 21, 16)), ("m", None),
          ("pk", f32(b, 2, 19, 16)), ("pv", f32(b, 2, 19, 16))], {"is_causal": 1}, n_out=3)
    q, k, v = f32(b, 4, 5, 32), f32(b, 2, 37, 32), f32(b, 2, 37, 32)
    case("attention_long_bool_mask", "Attention", [("q", q), ("k", k), ("v", v),
                                                     ("m", rng.random((5, 37)) > 0.3)])
    case("attention_long_float_mask_softcap", "Attention",
         [("q", q), ("k", k), ("v", v), ("m", f32(b, 1, 5, 37))], {"softcap": 2.0, "scale": 0.3})


def float_mask_attention_case():
    """A float mask of arbitrary values without a soft cap, over 37 keys: the
    compiled kernel adds the biases in its 16-key blocks and, with the score
    and the running maximum, for each key after them."""
    b = 2
    q, k, v = f32(b, 4, 5, 32), f32(b, 2, 37, 32), f32(b, 2, 37, 32)
    case("attention_long_float_mask", "Attention",
         [("q", q), ("k", k), ("v", v), ("m", f32(b, 1, 5, 37))], {"scale": 0.3})


def swiglu_split_case():
    """silu(up) * gate over two projections of one input: lpc fuses them into one
    two-part linear and reads the SwiGLU's halves in place, the gate second."""
    x = f32(3, 64)
    wg, wu = f32(64, 96), f32(64, 96)
    nodes = [helper.make_node("MatMul", ["x", "wg"], ["g"]), helper.make_node("MatMul", ["x", "wu"], ["u"]),
             helper.make_node("Sigmoid", ["u"], ["s"]), helper.make_node("Mul", ["u", "s"], ["su"]),
             helper.make_node("Mul", ["su", "g"], ["y0"])]
    graph = helper.make_graph(nodes, "swiglu_split_gate_second",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y0", TensorProto.FLOAT, [3, 96])],
                              [onnx.numpy_helper.from_array(wg, "wg"), onnx.numpy_helper.from_array(wu, "wu")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="lpc gen_op_cases")
    model.ir_version = 10
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    d = os.path.join(OUT, "swiglu_split_gate_second")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(os.path.join(d, "inputs"))
    os.makedirs(os.path.join(d, "ref_ort"))
    onnx.save(model, os.path.join(d, "model.onnx"))
    np.save(os.path.join(d, "inputs", "x.npy"), x)
    np.save(os.path.join(d, "ref_ort", "y0.npy"), sess.run(["y0"], {"x": x})[0])


if __name__ == "__main__":
    main()
