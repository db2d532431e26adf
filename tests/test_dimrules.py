"""Per-op chunk-dim rules (autochunk_onnx.ops.trace_node) on hand-built single-op graphs."""
from fractions import Fraction

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from autochunk_onnx.ops import MIX, trace_node
from autochunk_onnx.shapes import infer_graph

F = TensorProto.FLOAT


def one(op, inputs, attrs=None, opset=18, inits=None, n_out=1, out_shapes=None, domain="", extra_opsets=()):
    """Single-node model. `inputs`: list of (name, shape[, elem_type]) graph inputs, or a name of
    an initializer in `inits`, or "" (absent optional input). Returns (graph, node)."""
    inits = inits or {}
    g_inputs, names = [], []
    for spec in inputs:
        if isinstance(spec, str):
            names.append(spec)
            continue
        name, shape = spec[0], spec[1]
        et = spec[2] if len(spec) > 2 else F
        g_inputs.append(helper.make_tensor_value_info(name, et, None if shape is None else list(shape)))
        names.append(name)
    outs = [f"y{k}" for k in range(n_out)]
    if out_shapes is None:
        g_outputs = [helper.make_tensor_value_info(o, F, None) for o in outs]
    else:
        g_outputs = [helper.make_tensor_value_info(o, F, list(s)) for o, s in zip(outs, out_shapes)]
    node = helper.make_node(op, names, outs, name="n0", domain=domain, **(attrs or {}))
    init_protos = [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()]
    graph = helper.make_graph([node], "g", g_inputs, g_outputs, initializer=init_protos)
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in extra_opsets]
    m = helper.make_model(graph, opset_imports=opsets)
    m.ir_version = 9
    g = infer_graph(m)
    return g, g.nodes[0]


def tr(g, n, axis, k=0):
    return trace_node(g, n, k, axis)


def i64(*v):
    return np.array(v, dtype=np.int64)


# ---------------------------------------------------------------- elementwise / broadcasting

def test_add_broadcast_vector():
    g, n = one("Add", [("x", [2, 5, 8]), ("b", [8])])
    assert g.shape("y0") == (2, 5, 8)
    assert tr(g, n, 0) == [(0, 1), None]
    assert tr(g, n, 1) == [(1, 1), None]
    assert tr(g, n, 2) == [(2, 1), (0, 1)]
    assert all(isinstance(c[1], Fraction) for c in tr(g, n, 2))


def test_add_size_one_dim_broadcasts():
    g, n = one("Add", [("x", [2, 1, 8]), ("z", [2, 5, 8])])
    assert tr(g, n, 1) == [None, (1, 1)]
    assert tr(g, n, 0) == [(0, 1), (0, 1)]


def test_mul_scalar_operand_is_whole():
    g, n = one("Mul", [("x", [3, 4]), "s"], inits={"s": np.array(2.0, np.float32)})
    assert tr(g, n, 0) == [(0, 1), None]
    assert tr(g, n, 1) == [(1, 1), None]


def test_where_with_causal_mask():
    g, n = one("Where", [("m", [1, 1, 6, 6], TensorProto.BOOL), ("x", [2, 3, 6, 6]), "ninf"],
               inits={"ninf": np.array(-1e9, np.float32)})
    assert g.shape("y0") == (2, 3, 6, 6)
    assert tr(g, n, 0) == [None, (0, 1), None]
    assert tr(g, n, 1) == [None, (1, 1), None]
    assert tr(g, n, 2) == [(2, 1), (2, 1), None]
    assert tr(g, n, 3) == [(3, 1), (3, 1), None]


def test_unary():
    g, n = one("Tanh", [("x", [4, 7])])
    assert tr(g, n, 1) == [(1, 1)]


def test_clip_params_whole():
    g, n = one("Clip", [("x", [4, 7]), "lo", "hi"],
               inits={"lo": np.array(0.0, np.float32), "hi": np.array(1.0, np.float32)})
    assert tr(g, n, 0) == [(0, 1), None, None]


# ---------------------------------------------------------------- MatMul / Gemm / Einsum

def test_matmul_weight():
    g, n = one("MatMul", [("a", [2, 5, 8]), ("w", [8, 3])])
    assert g.shape("y0") == (2, 5, 3)
    assert tr(g, n, 0) == [(0, 1), None]  # weight has no batch dim
    assert tr(g, n, 1) == [(1, 1), None]  # M -> A
    assert tr(g, n, 2) == [None, (1, 1)]  # N -> B


def test_matmul_batched_broadcast():
    g, n = one("MatMul", [("a", [2, 1, 5, 8]), ("b", [1, 3, 8, 4])])
    assert g.shape("y0") == (2, 3, 5, 4)
    assert tr(g, n, 0) == [(0, 1), None]
    assert tr(g, n, 1) == [None, (1, 1)]
    assert tr(g, n, 2) == [(2, 1), None]
    assert tr(g, n, 3) == [None, (3, 1)]


def test_matmul_rank_mismatch_batch():
    g, n = one("MatMul", [("a", [3, 5, 8]), ("b", [2, 3, 8, 4])])
    assert g.shape("y0") == (2, 3, 5, 4)
    assert tr(g, n, 0) == [None, (0, 1)]
    assert tr(g, n, 1) == [(0, 1), (1, 1)]


def test_matmul_never_cuts_contraction_dim():
    g, n = one("MatMul", [("a", [2, 3, 5, 8]), ("b", [2, 3, 8, 4])])
    for axis in range(4):
        res = tr(g, n, axis)
        assert res != MIX
        a_cut, b_cut = res
        assert a_cut is None or a_cut[0] != 3  # K of A
        assert b_cut is None or b_cut[0] != 2  # K of B


def test_matmul_vector_rhs():
    g, n = one("MatMul", [("a", [2, 5, 8]), ("v", [8])])
    assert g.shape("y0") == (2, 5)
    assert tr(g, n, 1) == [(1, 1), None]
    assert tr(g, n, 0) == [(0, 1), None]


def test_matmul_vector_lhs():
    g, n = one("MatMul", [("v", [8]), ("b", [2, 8, 3])])
    assert g.shape("y0") == (2, 3)
    assert tr(g, n, 0) == [None, (0, 1)]
    assert tr(g, n, 1) == [None, (2, 1)]


def test_matmul_dot_is_mix():
    g, n = one("MatMul", [("a", [8]), ("v", [8])])
    assert tr(g, n, 0) == MIX


@pytest.mark.parametrize("ta,tb", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_gemm_transposes(ta, tb):
    M, K, N = 5, 8, 3
    a = [K, M] if ta else [M, K]
    b = [N, K] if tb else [K, N]
    g, n = one("Gemm", [("a", a), ("b", b), ("c", [N])], attrs={"transA": ta, "transB": tb})
    assert g.shape("y0") == (M, N)
    assert tr(g, n, 0) == [(1 if ta else 0, 1), None, None]
    assert tr(g, n, 1) == [None, (0 if tb else 1, 1), (0, 1)]


def test_einsum_attention_scores():
    g, n = one("Einsum", [("q", [2, 3, 5, 4]), ("k", [2, 3, 7, 4])], attrs={"equation": "bhid,bhjd->bhij"})
    assert g.shape("y0") == (2, 3, 5, 7)
    assert tr(g, n, 0) == [(0, 1), (0, 1)]
    assert tr(g, n, 2) == [(2, 1), None]
    assert tr(g, n, 3) == [None, (2, 1)]


def test_einsum_ellipsis():
    g, n = one("Einsum", [("q", [2, 3, 5, 4]), ("k", [2, 3, 7, 4])], attrs={"equation": "...id,...jd->...ij"})
    assert tr(g, n, 1) == [(1, 1), (1, 1)]
    assert tr(g, n, 2) == [(2, 1), None]
    assert tr(g, n, 3) == [None, (2, 1)]


def test_einsum_ellipsis_broadcast_rank():
    # (the shape engines disagree on this output's shape; declare it)
    g, n = one("Einsum", [("q", [2, 3, 5, 4]), ("k", [7, 4])], attrs={"equation": "...id,...jd->...ij"},
               out_shapes=[[2, 3, 5, 7]])
    assert tr(g, n, 0) == [(0, 1), None]
    assert tr(g, n, 3) == [None, (0, 1)]


def test_einsum_diagonal_is_mix():
    g, n = one("Einsum", [("a", [4, 4])], attrs={"equation": "ii->i"})
    assert tr(g, n, 0) == MIX


# ---------------------------------------------------------------- normalisations

def test_softmax_last_axis():
    g, n = one("Softmax", [("x", [2, 5, 8])], attrs={"axis": -1}, opset=13)
    assert tr(g, n, 2) == MIX
    assert tr(g, n, 1) == [(1, 1)]
    assert tr(g, n, 0) == [(0, 1)]


def test_softmax_middle_axis():
    g, n = one("Softmax", [("x", [2, 5, 8])], attrs={"axis": 1}, opset=13)
    assert tr(g, n, 1) == MIX
    assert tr(g, n, 2) == [(2, 1)]


def test_softmax_old_opset_flattens():
    g, n = one("Softmax", [("x", [2, 5, 8])], attrs={"axis": 1}, opset=11)
    assert tr(g, n, 1) == MIX
    assert tr(g, n, 2) == MIX
    assert tr(g, n, 0) == [(0, 1)]


def test_layer_norm():
    g, n = one("LayerNormalization", [("x", [2, 5, 8]), "s", "b"], attrs={"axis": -1}, opset=17,
               inits={"s": np.ones(8, np.float32), "b": np.zeros(8, np.float32)})
    assert tr(g, n, 2) == MIX
    assert tr(g, n, 1) == [(1, 1), None, None]
    g, n = one("LayerNormalization", [("x", [2, 5, 8]), "s"], attrs={"axis": 1}, opset=17,
               inits={"s": np.ones((5, 8), np.float32)})
    assert tr(g, n, 1) == MIX
    assert tr(g, n, 2) == MIX
    assert tr(g, n, 0) == [(0, 1), None]


def test_instance_norm():
    g, n = one("InstanceNormalization", [("x", [2, 3, 4, 4]), ("s", [3]), ("b", [3])])
    assert tr(g, n, 2) == MIX
    assert tr(g, n, 3) == MIX
    assert tr(g, n, 1) == [(1, 1), (0, 1), (0, 1)]
    assert tr(g, n, 0) == [(0, 1), None, None]


# ---------------------------------------------------------------- reductions

def test_reduce_axes_input_opset18():
    g, n = one("ReduceMean", [("x", [2, 5, 8]), "ax"], inits={"ax": i64(-1)}, opset=18)
    assert g.shape("y0") == (2, 5, 1)
    assert tr(g, n, 2) == MIX
    assert tr(g, n, 1) == [(1, 1), None]


def test_reduce_axes_attr_opset13():
    g, n = one("ReduceMax", [("x", [2, 5, 8])], attrs={"axes": [1]}, opset=13)
    assert g.shape("y0") == (2, 1, 8)
    assert tr(g, n, 1) == MIX
    assert tr(g, n, 2) == [(2, 1)]


def test_reduce_keepdims0_remaps():
    g, n = one("ReduceMean", [("x", [2, 5, 8])], attrs={"axes": [1], "keepdims": 0}, opset=13)
    assert g.shape("y0") == (2, 8)
    assert tr(g, n, 0) == [(0, 1)]
    assert tr(g, n, 1) == [(2, 1)]
    g, n = one("ReduceSum", [("x", [2, 5, 8, 3]), "ax"], attrs={"keepdims": 0}, inits={"ax": i64(0, 2)}, opset=18)
    assert g.shape("y0") == (5, 3)
    assert tr(g, n, 0) == [(1, 1), None]
    assert tr(g, n, 1) == [(3, 1), None]


def test_reduce_all_axes_is_mix():
    g, n = one("ReduceSum", [("x", [2, 5])], opset=18)
    assert tr(g, n, 0) == MIX


def test_reduce_runtime_axes_is_mix():
    g, n = one("ReduceSum", [("x", [2, 5, 8]), ("ax", [1], TensorProto.INT64)], opset=18,
               out_shapes=[[2, 5, 1]])
    assert tr(g, n, 0) == MIX


# ---------------------------------------------------------------- layout

def test_transpose():
    g, n = one("Transpose", [("x", [2, 5, 3, 4])], attrs={"perm": [0, 2, 1, 3]})
    assert g.shape("y0") == (2, 3, 5, 4)
    assert tr(g, n, 1) == [(2, 1)]
    assert tr(g, n, 2) == [(1, 1)]
    g, n = one("Transpose", [("x", [2, 5, 3])])  # default: reversed
    assert tr(g, n, 0) == [(2, 1)]


def test_reshape_split_heads():
    B, L, H, dh = 2, 6, 4, 3
    g, n = one("Reshape", [("x", [B, L, H * dh]), "s"], inits={"s": i64(B, L, H, dh)})
    assert g.shape("y0") == (B, L, H, dh)
    assert tr(g, n, 0) == [(0, 1), None]
    assert tr(g, n, 1) == [(1, 1), None]
    # the outer factor of a split: ratio = input elements per output element = dh
    assert tr(g, n, 2) == [(2, Fraction(dh)), None]
    # the inner factor cannot be cut
    assert tr(g, n, 3) == MIX


def test_reshape_merge():
    L, H = 6, 4
    g, n = one("Reshape", [("x", [2, L, H]), "s"], inits={"s": i64(2, L * H)})
    assert g.shape("y0") == (2, L * H)
    # one output element along the merged dim is 1/H of a row of L
    assert tr(g, n, 1) == [(1, Fraction(1, H)), None]
    assert tr(g, n, 0) == [(0, 1), None]


def test_reshape_merge_heads_back():
    B, L, H, dh = 2, 6, 4, 3
    g, n = one("Reshape", [("x", [B, L, H, dh]), "s"], inits={"s": i64(B, L, H * dh)})
    assert tr(g, n, 1) == [(1, 1), None]
    assert tr(g, n, 2) == [(2, Fraction(1, dh)), None]


def test_flatten():
    g, n = one("Flatten", [("x", [2, 3, 4])], attrs={"axis": 1})
    assert g.shape("y0") == (2, 12)
    assert tr(g, n, 0) == [(0, 1)]
    assert tr(g, n, 1) == [(1, Fraction(1, 4))]


def test_squeeze_unsqueeze():
    g, n = one("Unsqueeze", [("x", [2, 5]), "ax"], inits={"ax": i64(1)}, opset=13)
    assert g.shape("y0") == (2, 1, 5)
    assert tr(g, n, 0) == [(0, 1), None]
    assert tr(g, n, 2) == [(1, 1), None]
    g, n = one("Squeeze", [("x", [2, 1, 5]), "ax"], inits={"ax": i64(1)}, opset=13)
    assert g.shape("y0") == (2, 5)
    assert tr(g, n, 1) == [(2, 1), None]
    assert tr(g, n, 0) == [(0, 1), None]


def test_concat():
    g, n = one("Concat", [("a", [2, 5, 3]), ("b", [2, 5, 4])], attrs={"axis": -1})
    assert g.shape("y0") == (2, 5, 7)
    assert tr(g, n, 2) == MIX
    assert tr(g, n, 1) == [(1, 1), (1, 1)]


def test_split():
    g, n = one("Split", [("x", [2, 6, 8]), "sp"], inits={"sp": i64(3, 5)}, attrs={"axis": 2}, n_out=2, opset=13)
    assert g.shape("y0") == (2, 6, 3) and g.shape("y1") == (2, 6, 5)
    assert tr(g, n, 2, k=1) == MIX
    assert tr(g, n, 1, k=0) == [(1, 1), None]
    assert tr(g, n, 1, k=1) == [(1, 1), None]


def test_slice_full_range_ok_partial_mix():
    big = np.iinfo(np.int64).max
    g, n = one("Slice", [("x", [2, 6, 8]), "st", "en", "ax"],
               inits={"st": i64(0, 2), "en": i64(big, 5), "ax": i64(1, 2)})
    assert g.shape("y0") == (2, 6, 3)
    assert tr(g, n, 1) == [(1, 1), None, None, None]
    # narrowed with step 1: x read whole, the bounds moved by the chunk's offset (posrules)
    assert tr(g, n, 2) == [None, None, None, None]
    assert tr(g, n, 0) == [(0, 1), None, None, None]


def test_slice_step_or_offset_mix():
    g, n = one("Slice", [("x", [2, 6]), "st", "en", "ax", "sp"],
               inits={"st": i64(0), "en": i64(6), "ax": i64(1), "sp": i64(2)})
    assert tr(g, n, 1) == MIX
    g, n = one("Slice", [("x", [2, 6]), "st", "en", "ax"],
               inits={"st": i64(-6), "en": i64(-1), "ax": i64(1)})
    assert tr(g, n, 1) == [None, None, None, None]  # drops the last element: x whole, bounds offset (posrules)
    g, n = one("Slice", [("x", [2, 6]), "st", "en", "ax"],
               inits={"st": i64(-6), "en": i64(6), "ax": i64(1)})
    assert tr(g, n, 1) == [(1, 1), None, None, None]


def test_slice_runtime_bounds():
    g, n = one("Slice", [("x", [2, 6, 8]), ("st", [1], TensorProto.INT64), ("en", [1], TensorProto.INT64), "ax"],
               inits={"ax": i64(2)}, out_shapes=[[2, 6, 4]])
    assert tr(g, n, 2) == [None, None, None, None]  # run-time bounds: offset at run time (posrules)
    assert tr(g, n, 1) == [(1, 1), None, None, None]  # other axes untouched


def test_gather_embedding():
    g, n = one("Gather", ["emb", ("ids", [2, 7], TensorProto.INT64)], inits={"emb": np.zeros((50, 16), np.float32)})
    assert g.shape("y0") == (2, 7, 16)
    assert tr(g, n, 1) == [None, (1, 1)]
    assert tr(g, n, 0) == [None, (0, 1)]
    assert tr(g, n, 2) == [(1, 1), None]


def test_gather_axis1():
    g, n = one("Gather", [("x", [3, 10, 4]), ("ids", [5], TensorProto.INT64)], attrs={"axis": 1})
    assert g.shape("y0") == (3, 5, 4)
    assert tr(g, n, 0) == [(0, 1), None]
    assert tr(g, n, 1) == [None, (0, 1)]
    assert tr(g, n, 2) == [(2, 1), None]


def test_pad_zero_pads_on_cut_axis_ok():
    g, n = one("Pad", [("x", [4, 6, 8]), "pads"], inits={"pads": i64(0, 0, 1, 0, 0, 2)})
    assert g.shape("y0") == (4, 6, 11)
    assert tr(g, n, 0) == [(0, 1), None]
    assert tr(g, n, 1) == [(1, 1), None]
    assert tr(g, n, 2) == MIX


def test_pad_negative_pads_keep_size_but_shift_mix():
    """Regression (fuzz): pads (+1, -1) on a dim keep its size and shift it; was called chunkable."""
    g, n = one("Pad", [("x", [4, 6, 8]), "pads"], inits={"pads": i64(0, 1, 0, 0, -1, 0)})
    assert g.shape("y0") == (4, 6, 8)
    assert tr(g, n, 1) == MIX
    assert tr(g, n, 0) == [(0, 1), None]


def test_pad_axes_input_opset18():
    g, n = one("Pad", [("x", [4, 6, 8]), "pads", "", "axes"], inits={"pads": i64(1, -1), "axes": i64(-2)})
    assert g.shape("y0") == (4, 6, 8)
    assert tr(g, n, 1) == MIX
    assert tr(g, n, 2) == [(2, 1), None, None, None]


def test_pad_runtime_pads_mix():
    g, n = one("Pad", [("x", [4, 6, 8]), ("p", [6], TensorProto.INT64)], out_shapes=[[4, 6, 8]])
    assert tr(g, n, 0) == MIX


def test_gather_elements():
    g, n = one("GatherElements", [("x", [6, 8]), ("idx", [6, 3], TensorProto.INT64)], attrs={"axis": 1})
    assert g.shape("y0") == (6, 3)
    assert tr(g, n, 0) == [(0, 1), (0, 1)]
    assert tr(g, n, 1) == [None, (1, 1)]


def test_gather_elements_fewer_index_rows_mix():
    """Regression (fuzz): output row i reads data row i; with 3 index rows for 6 data rows the
    data was read whole, so every chunk read data rows from 0 again."""
    g, n = one("GatherElements", [("x", [6, 8]), ("idx", [3, 2], TensorProto.INT64)], attrs={"axis": 1})
    assert g.shape("y0") == (3, 2)
    assert tr(g, n, 0) == MIX


def test_conv():
    g, n = one("Conv", [("x", [2, 3, 8, 8]), "w", "b"], attrs={"pads": [1, 1, 1, 1]},
               inits={"w": np.zeros((4, 3, 3, 3), np.float32), "b": np.zeros(4, np.float32)})
    assert g.shape("y0") == (2, 4, 8, 8)
    assert tr(g, n, 0) == [(0, 1), None, None]
    assert tr(g, n, 1) == [None, (0, 1), (0, 1)]
    assert tr(g, n, 2) == MIX
    assert tr(g, n, 3) == MIX


def test_conv_pointwise():
    g, n = one("Conv", [("x", [2, 3, 8, 8]), "w"], inits={"w": np.zeros((4, 3, 1, 1), np.float32)})
    assert tr(g, n, 2) == [(2, 1), None]
    assert tr(g, n, 3) == [(3, 1), None]
    g, n = one("Conv", [("x", [2, 3, 8, 8]), "w"], attrs={"strides": [2, 2]},
               inits={"w": np.zeros((4, 3, 1, 1), np.float32)})
    assert tr(g, n, 2) == MIX


def test_trilu():
    g, n = one("Trilu", [("x", [2, 5, 5])], opset=14)
    # rows and columns too: the chunk's offset goes into k (posrules)
    assert tr(g, n, 1) == [(1, 1)]
    assert tr(g, n, 2) == [(2, 1)]
    assert tr(g, n, 0) == [(0, 1)]


def test_attention_opset23():
    B, H, L, S, dh = 2, 2, 5, 7, 4
    g, n = one("Attention", [("q", [B, H, L, dh]), ("k", [B, H, S, dh]), ("v", [B, H, S, dh]), ("m", [L, S])],
               opset=23, out_shapes=[[B, H, L, dh]])
    assert tr(g, n, 2) == [(2, 1), None, None, (0, 1)]
    assert tr(g, n, 3) == MIX
    assert tr(g, n, 0) == [(0, 1), (0, 1), (0, 1), None]


def test_attention_causal_mix():
    g, n = one("Attention", [("q", [1, 2, 5, 4]), ("k", [1, 2, 5, 4]), ("v", [1, 2, 5, 4])],
               attrs={"is_causal": 1}, opset=23, out_shapes=[[1, 2, 5, 4]])
    assert tr(g, n, 2) == MIX


# ---------------------------------------------------------------- opaque

def test_unknown_op_is_mix():
    g, n = one("NoSuchOpAnywhere", [("x", [2, 5])], out_shapes=[[2, 5]])
    assert tr(g, n, 0) == MIX


def test_custom_domain_is_mix():
    g, n = one("Relu", [("x", [2, 5])], domain="com.example", extra_opsets=("com.example",), out_shapes=[[2, 5]])
    assert g.shape("y0") == (2, 5)
    assert tr(g, n, 0) == MIX
    assert tr(g, n, 1) == MIX


def test_unknown_shape_is_mix():
    g, n = one("Relu", [("x", None)])
    assert g.shape("y0") is None
    assert tr(g, n, 0) == MIX
