"""Dim rules (and position rules) of com.microsoft ops, in dimrules' format (issue 16).

ONNX Runtime's transformers optimizer and onnxruntime-genai's model builder write these ops:

* SkipLayerNormalization / SkipSimplifiedLayerNormalization: a residual Add then a norm over the
  last axis: cuttable on every other axis, input and skip sliced, gamma/beta/bias whole;
* BiasGelu, FastGelu, QuickGelu: element-wise (dimrules.elementwise; the bias broadcasts);
* RotaryEmbedding: rotates the last axis by the token's position, so a chunk along the sequence
  needs its positions: `position_ids` [b, s] is sliced with the input; a 1-element position_ids
  (the offset of the first token) gets the chunk's start added in the loop body (position rule);
* MatMulNBits: rows of A (every axis but the last); the packed weights whole;
* MultiHeadAttention: query rows (Q sliced; K, V, the QKV bias and a key padding mask whole; an
  attention bias [b, h, q, k] sliced on its query axis), or the batch;
* EmbedLayerNormalization: the batch only (positions are implicit; its mask_index output reduces
  the mask over the sequence).

com.microsoft Attention computes Q, K and V from its one input inside the op: a chunk of query
rows would need the whole input for K and V, which a dim rule cannot say (one cut per input), so
it has no rule and stays opaque (its measured scratch is in kernels.py). GroupQueryAttention
appends to a KV cache: opaque as well (chunked prefill is not done).
"""
from __future__ import annotations

from fractions import Fraction
from typing import Optional

import onnx
from onnx import helper

from .graph import Graph, Node

ONE = Fraction(1)
MIX = "MIX"


def _shape(g: Graph, n: Node, k: int):
    return g.shape(n.inputs[k]) if len(n.inputs) > k and n.inputs[k] else None


def _aligned(g: Graph, n: Node, k: int, out_rank: int, axis: int, out_len: int):
    """numpy broadcasting of input k against the output: its axis aligned with `axis`, or None."""
    s = _shape(g, n, k)
    if s is None:
        return None
    j = axis - (out_rank - len(s))
    if j < 0 or s[j] == 1 and out_len != 1:
        return None
    return (j, ONE)


def skip_layer_norm(g: Graph, n: Node, k: int, axis: int):
    """Outputs: y, mean, inv_std_var (statistics, last axis 1), input_skip_bias_sum."""
    x = _shape(g, n, 0)
    out = g.shape(n.outputs[k])
    if axis >= len(x) - 1 or out is None or len(out) != len(x):
        return MIX
    res: list[Optional[tuple]] = [None] * len(n.inputs)
    res[0] = (axis, ONE)
    res[1] = _aligned(g, n, 1, len(x), axis, x[axis])
    return res


def rotary_embedding(g: Graph, n: Node, k: int, axis: int):
    """Input [b, s, d] or [b, n, s, h]; position_ids [b, s] or [1] (an offset); caches whole."""
    x = _shape(g, n, 0)
    pos = _shape(g, n, 1)
    if k != 0 or pos is None or axis == len(x) - 1 or n.attr("is_packed_batching", 0):
        return MIX
    seq_axis = 1 if len(x) == 3 else 2
    res: list[Optional[tuple]] = [None] * len(n.inputs)
    res[0] = (axis, ONE)
    if len(pos) == 2:
        if axis == seq_axis:
            res[1] = (1, ONE) if pos[1] == x[seq_axis] else None
            if res[1] is None:
                return MIX
        elif axis == 0:
            res[1] = (0, ONE) if pos[0] == x[0] and x[0] != 1 else None
    elif axis == 0 and x[0] != 1:
        return MIX  # one offset for a batch: fine, but keep the rule simple
    return res


def position_rotary(p) -> None:
    """A 1-element position_ids is the first token's position: the chunk starts `start` later."""
    g, n = p.graph, p.node
    pos = _shape(g, n, 1)
    if not (p.cut.axis == (1 if len(g.shape(n.inputs[0])) == 3 else 2) and pos is not None and len(pos) == 1):
        p.body.append(p.proto)
        return
    dtype = g.info(n.inputs[1]).elem_type
    start = p.start
    if dtype != onnx.TensorProto.INT64:
        cast = p.names(f"{p.tag}/rot_start_cast")
        p.body.append(helper.make_node("Cast", [start], [cast], name=cast, to=dtype))
        start = cast
    moved = p.names(f"{p.proto.input[1]}/{p.tag}_offset")
    p.body.append(helper.make_node("Add", [p.proto.input[1], start], [moved], name=moved))
    p.proto.input[1] = moved
    p.body.append(p.proto)


def matmul_nbits(g: Graph, n: Node, k: int, axis: int):
    a = _shape(g, n, 0)
    if k != 0 or axis >= len(a) - 1:
        return MIX  # N: the packed weight rows (not done)
    return [(axis, ONE)] + [None] * (len(n.inputs) - 1)


def multi_head_attention(g: Graph, n: Node, k: int, axis: int):
    """Inputs: query, key, value, bias, key_padding_mask, attention_bias, past_key, past_value, ..."""
    q, key = _shape(g, n, 0), _shape(g, n, 1)
    if k != 0 or q is None or len(q) != 3 or key is None or n.attr("unidirectional", 0):
        return MIX
    if any(len(n.inputs) > i and n.inputs[i] for i in range(6, len(n.inputs))):
        return MIX  # past key/value: decoding, not chunked
    res: list[Optional[tuple]] = [None] * len(n.inputs)
    mask = _shape(g, n, 4)
    bias = _shape(g, n, 5)
    if axis == 1:
        res[0] = (1, ONE)
        if mask is not None and len(mask) == 3:
            res[4] = (1, ONE) if mask[1] == q[1] and q[1] != 1 else None
        elif mask is not None and len(mask) != 2:
            return MIX  # 1-D end positions: whole is right, but not probed
        if bias is not None:
            res[5] = (2, ONE) if bias[2] == q[1] and q[1] != 1 else None
        return res
    if axis == 0:
        for i in (0, 1, 2):
            s = _shape(g, n, i)
            res[i] = (0, ONE) if s is not None and s[0] == q[0] else None
        if mask is not None:
            res[4] = (0, ONE) if len(mask) >= 2 and mask[0] == q[0] and q[0] != 1 else None
        if bias is not None:
            res[5] = (0, ONE) if bias[0] == q[0] and q[0] != 1 else None
        return res
    return MIX


def embed_layer_norm(g: Graph, n: Node, k: int, axis: int):
    """Batch only: positions along the sequence are implicit (or position_ids, not handled)."""
    if k != 0 or axis != 0:
        return MIX
    ids = _shape(g, n, 0)
    res: list[Optional[tuple]] = [None] * len(n.inputs)
    for i in (0, 1, 7, 8):
        s = _shape(g, n, i)
        if s is not None and len(s) == 2:
            res[i] = (0, ONE) if s[0] == ids[0] and ids[0] != 1 else None
    return res


def attention_ms(g: Graph, n: Node, k: int, axis: int):
    """Batch only (the QKV projection is inside the op: query rows need the whole input)."""
    if k != 0 or axis != 0 or any(len(n.inputs) > i and n.inputs[i] for i in range(4, len(n.inputs))):
        return MIX
    x = _shape(g, n, 0)
    res: list[Optional[tuple]] = [None] * len(n.inputs)
    res[0] = (0, ONE)
    m = _shape(g, n, 3)
    if m is not None:
        if len(m) == 1 and m[0] == x[0] and x[0] != 1:
            res[3] = (0, ONE)
        elif len(m) >= 2:
            res[3] = (0, ONE) if m[0] == x[0] and x[0] != 1 else None
        elif x[0] != 1:
            return MIX
    return res

