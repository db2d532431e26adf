"""Position-aware chunk rules: ops whose values depend on the absolute index along the cut.

A chunk [s, e) of such an op's output is the op applied to the chunk of its input with the offset
`s` put into one of its inputs:

* Trilu(X, k): rows [s, e) are Trilu(X[s:e], k + s); columns [s, e) are Trilu(X[:, s:e], k - s);
* Range(a, b, d) (integer): elements [s, e) are Range(a + s*d, a + e*d, d);
* ConstantOfShape(shape): position-free, but its shape input names the chunk's length (patched by
  the rewrite like a Reshape/Expand target);
* Slice(X, st, en) with run-time bounds on the cut axis and step 1: elements [s, e) of the output
  are X[st' + s : st' + e] (st' the start normalised against X's size at run time);
* CumSum(X, a) along the cut: elements [s, e) are CumSum(X[s:e]) plus the running total before
  the chunk, ReduceSum(X[:s]) (X[e:] when reversed); X is read whole (position ids from a mask);
* EyeLike(X, k): rows [s, e) are Equal(j - i, k) over rows i in [s, e) (k is an attribute, so the
  offset goes into the index ranges instead), columns likewise;
* Tile(X, r) along an axis it repeats: elements [s, e) are Gather(X, [s, e) mod n) tiled by 1
  along that axis (X read whole; its other axes tile as before).

So a causal mask built in the graph (ConstantOfShape -> Trilu -> Cast -> Where), a mask cut from
a buffer by the run-time length, or a bias made from aranges is built chunk by chunk in the loop
and never exists at [L, L]. `RULES` are dim rules in dimrules' format; `PATCHES` emit, inside a
Loop body, the inputs that carry the offset (each takes the chunk's start and end in elements).
"""
from __future__ import annotations

from fractions import Fraction
from typing import Callable, Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .graph import Graph, Node

ONE = Fraction(1)
MIX = "MIX"

_INT_TYPES = {onnx.TensorProto.INT32, onnx.TensorProto.INT64, onnx.TensorProto.INT16, onnx.TensorProto.INT8}


def trilu(g: Graph, n: Node, k: int, axis: int):
    rank = len(g.shape(n.inputs[0]))
    if rank < 2:
        return MIX
    return [(axis, ONE)] + [None] * (len(n.inputs) - 1)


def range_(g: Graph, n: Node, k: int, axis: int):
    info = g.info(n.outputs[0])
    if info is None or info.elem_type not in _INT_TYPES:
        return MIX  # float steps: the chunk's length could round differently
    return [None, None, None]


def constant_of_shape(g: Graph, n: Node, k: int, axis: int):
    return [None]


def _cumsum_axis(g: Graph, n: Node) -> int | None:
    ax = g.const_value(n.inputs[1]) if len(n.inputs) > 1 and n.inputs[1] else None
    if ax is None or np.asarray(ax).size != 1:
        return None
    a, rank = int(np.asarray(ax).reshape(-1)[0]), len(g.shape(n.inputs[0]))
    return a + rank if a < 0 else a


def cumsum(g: Graph, n: Node, k: int, axis: int):
    """Along another axis: element-wise. Along its own: X read whole, the offset rule adds the
    total before the chunk."""
    a = _cumsum_axis(g, n)
    if a is None:
        return MIX
    return [(axis, ONE), None] if a != axis else [None, None]


def eye_like(g: Graph, n: Node, k: int, axis: int):
    """The chunk of X gives the chunk's shape (its values are never read); the offset rule moves k."""
    return [(axis, ONE)] if len(g.shape(n.inputs[0])) == 2 else MIX


def tile(g: Graph, n: Node, k: int, axis: int):
    """An axis it leaves unchanged: sliced with the output. An axis it repeats: X read whole, the
    offset rule gathers the chunk's rows modulo X's size."""
    src, dst = g.shape(n.inputs[0]), g.shape(n.outputs[0])
    return [(axis, ONE), None] if src[axis] == dst[axis] else [None, None]


def _slice_params(g: Graph, n: Node):
    """(axes, steps) as constants, or None; starts/ends may be computed at run time."""
    rank = len(g.shape(n.inputs[0]))

    def val(i):
        return g.const_value(n.inputs[i]) if len(n.inputs) > i and n.inputs[i] else None
    if len(n.inputs) < 3:
        return None
    count = g.shape(n.inputs[1])
    if count is None or len(count) != 1:
        return None
    axes = val(3)
    if axes is None:
        if len(n.inputs) > 3 and n.inputs[3]:
            return None
        axes = np.arange(count[0])
    steps = val(4)
    if steps is None:
        if len(n.inputs) > 4 and n.inputs[4]:
            return None
        steps = np.ones(count[0], np.int64)
    axes = [int(a) + rank if int(a) < 0 else int(a) for a in np.asarray(axes).reshape(-1)]
    return axes, [int(s) for s in np.asarray(steps).reshape(-1)]


def slice_offset(g: Graph, n: Node, k: int, axis: int) -> Optional[list]:
    """Slice cut on an axis it narrows with step 1: the input is read whole, the bounds moved."""
    if g.opset < 10:
        return None
    p = _slice_params(g, n)
    if p is None:
        return None
    axes, steps = p
    if axis not in axes or steps[axes.index(axis)] != 1:
        return None
    return [None] * len(n.inputs)


def slice_or_offset(g: Graph, n: Node, k: int, axis: int):
    """dimrules' Slice rule; where it mixes the dim (narrowed, or bounds known at run time only),
    the offset rule."""
    from .dimrules import slice_
    res = slice_(g, n, k, axis)
    return res if res != MIX else (slice_offset(g, n, k, axis) or MIX)


# --- patches: emitted inside a Loop body --------------------------------------------------------

def _const(body: list, names, base: str, values, dtype=np.int64) -> str:
    out = names(base)
    body.append(helper.make_node("Constant", [], [out], name=out,
                                 value=numpy_helper.from_array(np.asarray(values, dtype=dtype), out)))
    return out


def _node(body: list, names, op: str, inputs: list[str], base: str, **attrs) -> str:
    out = names(base)
    body.append(helper.make_node(op, inputs, [out], name=out, **attrs))
    return out


def _scalar(body, names, t: str, tag: str) -> str:
    """[1] -> scalar."""
    return _node(body, names, "Squeeze", [t, _const(body, names, f"{tag}/axes0", [0])], f"{tag}/scalar")


def patch_trilu(g: Graph, n: Node, axis: int, ins: list[str], start: str, end: str, body: list, names, tag: str) -> list[str]:
    rank = len(g.shape(n.inputs[0]))
    if axis < rank - 2:
        return ins
    s = _scalar(body, names, start, f"{tag}/trilu_s")
    kk = ins[1] if len(ins) > 1 and ins[1] else _const(body, names, f"{tag}/trilu_k0", 0)
    op = "Add" if axis == rank - 2 else "Sub"
    k2 = _node(body, names, op, [kk, s], f"{tag}/trilu_k")
    return [ins[0], k2]


def patch_range(g: Graph, n: Node, axis: int, ins: list[str], start: str, end: str, body: list, names, tag: str) -> list[str]:
    a, _, d = ins
    out = []
    for b in (start, end):
        bb = _node(body, names, "CastLike", [_scalar(body, names, b, f"{tag}/range_b"), a], f"{tag}/range_bc")
        out.append(_node(body, names, "Add", [a, _node(body, names, "Mul", [bb, d], f"{tag}/range_bd")], f"{tag}/range_at"))
    return [out[0], out[1], d]


def patch_slice(g: Graph, n: Node, axis: int, ins: list[str], start: str, end: str, body: list, names, tag: str) -> list[str]:
    """starts[j] <- st' + s, ends[j] <- st' + e on the cut axis j; st' clamped into [0, size]."""
    axes, _ = _slice_params(g, n)
    j = axes.index(axis)
    count = len(axes)
    idx = _const(body, names, f"{tag}/slice_j", [j])
    st = _node(body, names, "Gather", [ins[1], idx], f"{tag}/slice_st", axis=0)
    shp = _node(body, names, "Shape", [ins[0]], f"{tag}/slice_shape")
    size = _node(body, names, "Gather", [shp, _const(body, names, f"{tag}/slice_ax", [axis])], f"{tag}/slice_size", axis=0)
    size = _node(body, names, "CastLike", [size, st], f"{tag}/slice_size_c")
    zero = _node(body, names, "CastLike", [_const(body, names, f"{tag}/slice_zero", [0]), st], f"{tag}/slice_zero_c")
    neg = _node(body, names, "Less", [st, zero], f"{tag}/slice_neg")
    st = _node(body, names, "Where", [neg, _node(body, names, "Add", [st, size], f"{tag}/slice_wrap"), st], f"{tag}/slice_norm")
    st = _node(body, names, "Min", [_node(body, names, "Max", [st, zero], f"{tag}/slice_lo"), size], f"{tag}/slice_clamp")
    mask = _const(body, names, f"{tag}/slice_mask", [i == j for i in range(count)], dtype=bool)
    new = []
    for b, src in ((start, ins[1]), (end, ins[2])):
        v = _node(body, names, "Add", [st, _node(body, names, "CastLike", [b, st], f"{tag}/slice_b")], f"{tag}/slice_v")
        new.append(_node(body, names, "Where", [mask, v, src], f"{tag}/slice_bound"))
    return [ins[0], new[0], new[1]] + list(ins[3:])


def _emit(pp, op: str, inputs: list[str], base: str, **attrs) -> str:
    return _node(pp.body, pp.names, op, inputs, f"{pp.tag}/{base}", **attrs)


def _range1(pp, lo: str, n: str, tag: str) -> str:
    """Range(lo, lo + n) for [1]-shaped lo and n."""
    a = _scalar(pp.body, pp.names, lo, f"{pp.tag}/{tag}_lo")
    b = _scalar(pp.body, pp.names, _emit(pp, "Add", [lo, n], f"{tag}_hi1"), f"{pp.tag}/{tag}_hi")
    return _emit(pp, "Range", [a, b, _const(pp.body, pp.names, f"{pp.tag}/{tag}_one", 1)], f"{tag}_range")


def _reduce_sum(pp, x: str, axis: int, base: str) -> str:
    if pp.graph.opset >= 13:
        return _emit(pp, "ReduceSum", [x, pp.const(f"{base}_ax", [axis])], base, keepdims=1)
    return _emit(pp, "ReduceSum", [x], base, axes=[axis], keepdims=1)


def position_cumsum(pp) -> None:
    """CumSum along the cut: CumSum(X[s:e]) + sum of X before the chunk (after it, reversed). The
    running total is recomputed from X (read whole) rather than carried through the Loop."""
    a = _cumsum_axis(pp.graph, pp.node)
    if a != pp.cut.axis:
        pp.body.append(pp.proto)
        return
    x = pp.proto.input[0]
    ax = pp.const("cumsum_axis", [a])
    end = _emit(pp, "Add", [pp.start, pp.length], "cumsum_end")
    chunk = _emit(pp, "Slice", [x, pp.start, end, ax], "cumsum_chunk")
    if pp.node.attr("reverse", 0):
        rest = _emit(pp, "Slice", [x, end, pp.const("cumsum_big", [np.iinfo(np.int64).max]), ax], "cumsum_after")
    else:
        rest = _emit(pp, "Slice", [x, pp.const("cumsum_zero", [0]), pp.start, ax], "cumsum_before")
    carry = _reduce_sum(pp, rest, a, "cumsum_carry")
    part = _emit(pp, "CumSum", [chunk, pp.proto.input[1]], "cumsum_part",
                 exclusive=pp.node.attr("exclusive", 0), reverse=pp.node.attr("reverse", 0))
    pp.body.append(helper.make_node("Add", [part, carry], [pp.proto.output[0]], name=pp.proto.name))


def position_eye_like(pp) -> None:
    """EyeLike's chunk: Equal(j - i, k) over the chunk's row and column indices, cast to its dtype."""
    x, axis = pp.proto.input[0], pp.cut.axis
    shp = _emit(pp, "Shape", [x], "eye_shape")
    rows = _emit(pp, "Gather", [shp, pp.const("eye_r", [0])], "eye_rows", axis=0)
    cols = _emit(pp, "Gather", [shp, pp.const("eye_c", [1])], "eye_cols", axis=0)
    zero = pp.const("eye_zero", [0])
    ri = _range1(pp, pp.start if axis == 0 else zero, rows, "eye_ri")
    ci = _range1(pp, pp.start if axis == 1 else zero, cols, "eye_ci")
    ri = _emit(pp, "Unsqueeze", [ri, pp.const("eye_ax1", [1])], "eye_ri_col")
    diff = _emit(pp, "Sub", [ci, ri], "eye_diff")
    eq = _emit(pp, "Equal", [diff, pp.const("eye_k", pp.node.attr("k", 0))], "eye_eq")
    to = pp.node.attr("dtype", None)
    if to is None:
        to = pp.graph.info(pp.node.inputs[0]).elem_type
    pp.body.append(helper.make_node("Cast", [eq], [pp.proto.output[0]], name=pp.proto.name, to=to))


def position_tile(pp) -> None:
    """Tile along an axis it repeats: Gather(X, [s, e) mod n, axis) tiled by 1 along it."""
    g, n, axis = pp.graph, pp.node, pp.cut.axis
    if g.shape(n.inputs[0])[axis] == g.shape(n.outputs[0])[axis]:
        pp.body.append(pp.proto)
        return
    x, reps = pp.proto.input[0], pp.proto.input[1]
    size = _emit(pp, "Gather", [_emit(pp, "Shape", [x], "tile_shape"), pp.const("tile_ax", [axis])], "tile_n", axis=0)
    idx = _emit(pp, "Mod", [_range1(pp, pp.start, pp.length, "tile_i"), _scalar(pp.body, pp.names, size, f"{pp.tag}/tile_ns")],
                "tile_idx")
    rows = _emit(pp, "Gather", [x, idx], "tile_rows", axis=axis)
    mask = pp.const("tile_mask", [i == axis for i in range(len(g.shape(n.inputs[0])))], dtype=bool)
    reps1 = _emit(pp, "Where", [mask, pp.const("tile_one", [1]), reps], "tile_reps")
    pp.body.append(helper.make_node("Tile", [rows, reps1], [pp.proto.output[0]], name=pp.proto.name))


def _position(patch: Callable, applies: Callable | None = None) -> Callable:
    """A registry position rule (rewrite.PositionPatch -> None) from an input patch: the chunk's
    end is start + length; the node is emitted with its patched inputs."""
    def position(pp) -> None:
        axis = pp.cut.axis
        if applies is None or applies(pp.graph, pp.node, axis):
            end = _node(pp.body, pp.names, "Add", [pp.start, pp.length], f"{pp.tag}/pos_end")
            ins = patch(pp.graph, pp.node, axis, list(pp.proto.input), pp.start, end, pp.body, pp.names, pp.tag)
            del pp.proto.input[:]
            pp.proto.input.extend(ins)
        pp.body.append(pp.proto)
    return position


def _slice_needs_offset(g: Graph, n: Node, axis: int) -> bool:
    """The plain Slice rule (input sliced with the output) does not apply on this axis."""
    from .dimrules import slice_
    return slice_(g, n, 0, axis) == MIX


position_trilu = _position(patch_trilu)
position_range = _position(patch_range)
position_slice = _position(patch_slice, _slice_needs_offset)
