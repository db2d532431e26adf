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
rows reads that input sliced and whole (`OpInfo.whole_too`); its position rule projects K and V
once before the loop and hands each chunk all keys as the op's `past` (position_attention).
GroupQueryAttention appends to a KV cache: opaque (chunked prefill is not done).
"""
from __future__ import annotations

from fractions import Fraction
from typing import Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from . import notes
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
    """com.microsoft Attention: the batch, or query rows. Q, K, V are projected from the one input
    inside the op, so a chunk of query rows also reads the whole input (`OpInfo.whole_too`): the
    position rule projects K, V once before the loop and gives each chunk all keys as `past`.
    Bidirectional only, no past, equal Q/K/V widths; mask: none, 1-D end positions [b] or 2-D [b, L]."""
    x = _shape(g, n, 0)
    if k != 0 or x is None or len(x) != 3 or any(len(n.inputs) > i and n.inputs[i] for i in range(4, len(n.inputs))):
        return MIX
    m = _shape(g, n, 3)
    res: list[Optional[tuple]] = [None] * len(n.inputs)
    if axis == 0:
        res[0] = (0, ONE)
        if m is not None:
            if len(m) == 1 and m[0] == x[0] and x[0] != 1:
                res[3] = (0, ONE)
            elif len(m) >= 2:
                res[3] = (0, ONE) if m[0] == x[0] and x[0] != 1 else None
            elif x[0] != 1:
                return MIX
        return res
    if axis != 1 or n.attr("unidirectional", 0) or n.attr("past_present_share_buffer", 0) or n.attr("do_rotary", 0):
        return MIX
    sizes = n.attr("qkv_hidden_sizes")
    w = _shape(g, n, 1)
    if sizes and len(set(sizes)) != 1 or w is None or len(w) != 2 or w[1] % 3:
        return MIX
    if m is not None and not (len(m) == 1 and m[0] == x[0] or len(m) == 2 and m[1] == x[1]):
        return MIX  # start/end or 3-D/4-D masks: not done
    res[0] = (1, ONE)
    return res


def position_attention(p) -> None:
    """Query rows [s, e) of com.microsoft Attention(x, W, b, mask): before the loop, K and V of
    the whole x ([2, b, h, L, d/h], what the op's `past` holds) and a 2-D key mask; in the body,
    Attention(x[s:e], W, b, mask', past') with past' = K, V without rows [s, e), which the op
    appends from the chunk itself, and mask' the key mask in that order. Softmax over keys does
    not depend on their order (bidirectional, no position bias), so the chunk equals rows [s, e)
    of the whole (max abs diff ~3e-7 measured)."""
    g, n, proto = p.graph, p.node, p.proto
    if p.cut.axis != 1:
        p.body.append(proto)
        return
    if p.outer is None:
        raise ValueError("Attention by query rows needs nodes before the loop")
    x, w, b = n.inputs[0], n.inputs[1], n.inputs[2] if len(n.inputs) > 2 and n.inputs[2] else None
    heads = n.attr("num_heads", 1)
    d = g.shape(w)[1] // 3
    outer, body, names, tag = p.outer, p.body, p.names, p.tag
    base = f"{n.name or n.outputs[0]}/{tag}"

    def node(op, ins, nodes, **attrs):
        out = names(f"{base}/{op}")
        nodes.append(helper.make_node(op, ins, [out], name=out, **attrs))
        return out

    def const(values, nodes, dtype=np.int64):
        out = names(f"{base}/const")
        nodes.append(helper.make_node("Constant", [], [out], name=out,
                                      value=numpy_helper.from_array(np.asarray(values, dtype=dtype), out)))
        return out

    # before the loop: K, V of the whole input, in the layout of `past`
    wkv = node("Slice", [w, const([d], outer), const([3 * d], outer), const([1], outer)], outer)
    kv = node("MatMul", [x, wkv], outer)
    if b is not None:
        kv = node("Add", [kv, node("Slice", [b, const([d], outer), const([3 * d], outer), const([0], outer)], outer)], outer)
    kv = node("Reshape", [kv, const([0, 0, 2, heads, d // heads], outer)], outer)
    kv = node("Transpose", [kv], outer, perm=[2, 0, 3, 1, 4])
    # a 2-D int32 key mask [b, L]: given, from the 1-D end positions, or all ones
    mask = n.inputs[3] if len(n.inputs) > 3 and n.inputs[3] else None
    shape = node("Shape", [x], outer)
    if mask is None:
        bl = node("Slice", [shape, const([0], outer), const([2], outer), const([0], outer)], outer)
        mask2 = node("ConstantOfShape", [bl], outer, value=numpy_helper.from_array(np.array([1], np.int32)))
    elif len(g.shape(mask)) == 1:
        length = node("Squeeze", [node("Slice", [shape, const([1], outer), const([2], outer), const([0], outer)], outer)],
                      outer)
        ar = node("Range", [const(0, outer), length, const(1, outer)], outer)
        ends = node("Unsqueeze", [node("Cast", [mask], outer, to=onnx.TensorProto.INT64), const([1], outer)], outer)
        mask2 = node("Cast", [node("Less", [node("Unsqueeze", [ar, const([0], outer)], outer), ends], outer)], outer,
                     to=onnx.TensorProto.INT32)
    else:
        mask2 = mask
    # in the body: keys without the chunk's rows (the op appends them), the mask in that order
    end = node("Add", [p.start, p.length], body)
    zero, big = const([0], body), const([np.iinfo(np.int64).max], body)
    ax3, ax1 = const([3], body), const([1], body)
    past = node("Concat", [node("Slice", [kv, zero, p.start, ax3], body), node("Slice", [kv, end, big, ax3], body)], body,
                axis=3)
    mask_c = node("Concat", [node("Slice", [mask2, zero, p.start, ax1], body), node("Slice", [mask2, end, big, ax1], body),
                             node("Slice", [mask2, p.start, end, ax1], body)], body, axis=1)
    ins = list(proto.input) + [""] * (5 - len(proto.input))
    ins[3], ins[4] = mask_c, past
    del proto.input[:]
    proto.input.extend(ins)
    del proto.output[1:]
    proto.output.append(names(f"{base}/present_unused"))
    body.append(proto)


def group_query_attention(g: Graph, n: Node, k: int, axis: int):
    """Opaque, said in a note: a chunked prefill (a Loop of shorter prefills, each appending to
    the KV cache the next one reads) needs the cache carried from one iteration to the next and
    `present` built up across them; the rewrite's Loops carry only the chunks of their outputs."""
    notes.note(f"GroupQueryAttention node {n.name} is computed whole: a chunked prefill needs the KV cache "
               f"carried across loop iterations, which the rewrite does not emit", kind=notes.INFO)
    return MIX
