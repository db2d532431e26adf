"""Per-op chunk-dim rules: the functions the op registry (`ops.py`) gives each op.

A rule answers, for one node: "if output `k` is cut along `axis`, which axis of each input must be
cut, and with what length ratio?" It returns one entry per input: `(in_axis, ratio)` for an input
that carries the dim (ratio = input elements per output element along the cut, 1 except across a
Reshape that merges or splits the dim), `None` for an input used whole (weights, broadcast
operands, K/V of attention, shape tensors), or the rule returns `MIX` when the op mixes values
along that dim (softmax or reduction over it, a contraction, a Concat on it). Unknown ops have no
rule: they are opaque and bound a region, never abort the search.

Rules read shapes only (never weight values), except small constant attributes/inputs such as
Reduce axes or Slice bounds.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Callable, Optional

import numpy as np

from . import notes
from .graph import Graph, Node
from .graphutil import parse_einsum

InCut = tuple[int, Fraction]  # (input axis, input elements per output element along the cut)
MIX = "MIX"
Rule = Callable[[Graph, Node, int, int], "list[Optional[InCut]] | str"]

ONE = Fraction(1)


def _shape(g: Graph, name: str) -> tuple[int, ...] | None:
    return g.shape(name) if name else None


def _norm(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _broadcast_input(g: Graph, name: str, out_shape: tuple[int, ...], axis: int) -> Optional[InCut]:
    """numpy broadcasting: the input axis aligned right with `axis`, unless absent or size 1."""
    s = _shape(g, name)
    if s is None:
        return None
    j = axis - (len(out_shape) - len(s))
    if j < 0 or s[j] == 1 and out_shape[axis] != 1:
        return None
    return (j, ONE)


def elementwise(g: Graph, n: Node, k: int, axis: int):
    out = _shape(g, n.outputs[k])
    return [_broadcast_input(g, i, out, axis) if i else None for i in n.inputs]


def first_input_only(g: Graph, n: Node, k: int, axis: int):
    """Unary ops with extra scalar/param inputs (Clip min/max, Dropout ratio)."""
    out = _shape(g, n.outputs[k])
    return [_broadcast_input(g, n.inputs[0], out, axis)] + [None] * (len(n.inputs) - 1)


def _mixes_from(axis_attr: int, rank: int, axis: int) -> bool:
    return axis >= _norm(axis_attr, rank)


def softmax(g: Graph, n: Node, k: int, axis: int):
    rank = len(_shape(g, n.outputs[0]))
    if g.opset >= 13:
        if axis == _norm(n.attr("axis", -1), rank):
            return MIX
    elif _mixes_from(n.attr("axis", 1), rank, axis):  # opset < 13 flattens from `axis` on
        return MIX
    return [(axis, ONE)]


def layer_norm(g: Graph, n: Node, k: int, axis: int):
    rank = len(_shape(g, n.inputs[0]))
    if _mixes_from(n.attr("axis", -1), rank, axis):
        return MIX
    return [(axis, ONE)] + [None] * (len(n.inputs) - 1)


def instance_norm(g: Graph, n: Node, k: int, axis: int):
    if axis >= 2:
        return MIX  # statistics over the spatial dims
    per_channel = (0, ONE) if axis == 1 else None
    return [(axis, ONE), per_channel, per_channel]


def group_norm(g: Graph, n: Node, k: int, axis: int):
    return MIX if axis != 0 else [(0, ONE)] + [None] * (len(n.inputs) - 1)


def batch_norm(g: Graph, n: Node, k: int, axis: int):
    if n.attr("training_mode", 0) or k > 0:
        return MIX
    per_channel = (0, ONE) if axis == 1 else None
    return [(axis, ONE)] + [per_channel] * (len(n.inputs) - 1)


def matmul(g: Graph, n: Node, k: int, axis: int):
    a, b = _shape(g, n.inputs[0]), _shape(g, n.inputs[1])
    out = _shape(g, n.outputs[0])
    ro = len(out)
    if len(a) == 1 and len(b) == 1:
        return MIX
    if len(b) == 1:  # [..., M, K] @ [K] -> [..., M]
        return [(axis + len(a) - 1 - ro, ONE) if _broadcast_input(g, n.inputs[0], out + (1,), axis) else None, None]
    if len(a) == 1:  # [K] @ [..., K, N] -> [..., N]
        return [None, _broadcast_input(g, n.inputs[1], out[:-1] + (1, out[-1]), axis if axis < ro - 1 else ro)]
    if axis == ro - 2:  # M
        return [(len(a) - 2, ONE), None]
    if axis == ro - 1:  # N
        return [None, (len(b) - 1, ONE)]
    batch = out[:-2]
    return [_broadcast_input(g, n.inputs[0], batch + (1, 1), axis), _broadcast_input(g, n.inputs[1], batch + (1, 1), axis)]


def gemm(g: Graph, n: Node, k: int, axis: int):
    out = _shape(g, n.outputs[0])
    c = [_broadcast_input(g, n.inputs[2], out, axis)] if len(n.inputs) > 2 and n.inputs[2] else []
    if axis == 0:
        return [(1 if n.attr("transA", 0) else 0, ONE), None] + c
    return [None, (0 if n.attr("transB", 0) else 1, ONE)] + c


def einsum(g: Graph, n: Node, k: int, axis: int):
    shapes = [_shape(g, i) for i in n.inputs]
    ins, out = parse_einsum(n.attr("equation"), [len(s) for s in shapes])
    letter = out[axis]
    res = []
    out_len = _shape(g, n.outputs[0])[axis]
    for term, s in zip(ins, shapes):
        if term.count(letter) > 1:
            return MIX  # a diagonal along the cut dim
        j = term.find(letter)
        res.append(None if j < 0 or s[j] == 1 and out_len != 1 else (j, ONE))
    return res


def transpose(g: Graph, n: Node, k: int, axis: int):
    rank = len(_shape(g, n.inputs[0]))
    perm = n.attr("perm") or list(range(rank))[::-1]
    return [(perm[axis], ONE)]


def _groups(src: tuple[int, ...], dst: tuple[int, ...]):
    """Split two shapes of equal element count into aligned groups of equal products."""
    i = j = 0
    out = []
    while i < len(src) or j < len(dst):
        gi, gj = [i] if i < len(src) else [], [j] if j < len(dst) else []
        ps = src[i] if i < len(src) else 1
        pd = dst[j] if j < len(dst) else 1
        i += 1 if i < len(src) else 0
        j += 1 if j < len(dst) else 0
        while ps != pd:
            if ps < pd and i < len(src):
                ps *= src[i]
                gi.append(i)
                i += 1
            elif j < len(dst):
                pd *= dst[j]
                gj.append(j)
                j += 1
            else:
                return None
        out.append((gi, gj))
    return out


def reshape_like(g: Graph, n: Node, k: int, axis: int):
    """Reshape/Flatten/Squeeze/Unsqueeze by shapes: the cut dim must be the outermost non-1 factor."""
    src, dst = _shape(g, n.inputs[0]), _shape(g, n.outputs[0])
    rest = [None] * (len(n.inputs) - 1)
    groups = _groups(src, dst)
    if groups is None:
        return MIX
    for gi, gj in groups:
        if axis not in gj:
            continue
        outer_d = [a for a in gj if dst[a] != 1]
        outer_s = [a for a in gi if src[a] != 1]
        if not outer_d or outer_d[0] != axis or not outer_s:
            return MIX
        j = outer_s[0]
        inner_d = 1
        for a in gj[gj.index(axis) + 1:]:
            inner_d *= dst[a]
        inner_s = 1
        for a in gi[gi.index(j) + 1:]:
            inner_s *= src[a]
        return [(j, Fraction(inner_d, inner_s))] + rest
    return MIX


def expand(g: Graph, n: Node, k: int, axis: int):
    return [_broadcast_input(g, n.inputs[0], _shape(g, n.outputs[0]), axis), None]


def concat(g: Graph, n: Node, k: int, axis: int):
    rank = len(_shape(g, n.outputs[0]))
    if axis == _norm(n.attr("axis"), rank):
        return MIX
    return [(axis, ONE) for _ in n.inputs]


def split(g: Graph, n: Node, k: int, axis: int):
    rank = len(_shape(g, n.inputs[0]))
    if axis == _norm(n.attr("axis", 0), rank):
        return MIX
    return [(axis, ONE)] + [None] * (len(n.inputs) - 1)


def slice_(g: Graph, n: Node, k: int, axis: int):
    """Legal on a dim the Slice leaves whole (start 0, end past the size, step 1)."""
    src = _shape(g, n.inputs[0])
    rank, size = len(src), src[axis]
    if g.opset >= 10:
        def val(i):
            return g.const_value(n.inputs[i]) if len(n.inputs) > i and n.inputs[i] else None
        starts, ends, axes, steps = val(1), val(2), val(3), val(4)
        if axes is None:
            if len(n.inputs) > 3 and n.inputs[3]:
                return MIX  # axes computed at run time
            count = len(starts) if starts is not None else len(ends) if ends is not None else rank
            axes = list(range(count))
    else:
        starts, ends, axes, steps = n.attr("starts"), n.attr("ends"), n.attr("axes"), None
        axes = axes or list(range(len(starts)))
    for idx, a in enumerate(int(a) for a in axes):
        if _norm(a, rank) != axis:
            continue
        if starts is None or ends is None or (steps is None and len(n.inputs) > 4 and n.inputs[4]):
            return MIX
        st = int(steps[idx]) if steps is not None else 1
        s0, e0 = int(starts[idx]), int(ends[idx])
        s0 = min(max(s0 + size if s0 < 0 else s0, 0), size)
        e0 = e0 + size if e0 < 0 else e0
        if st != 1 or s0 != 0 or e0 < size:
            return MIX
    return [(axis, ONE)] + [None] * (len(n.inputs) - 1)


def gather(g: Graph, n: Node, k: int, axis: int):
    data = _shape(g, n.inputs[0])
    idx = _shape(g, n.inputs[1])
    ax = _norm(n.attr("axis", 0), len(data))
    if axis < ax:
        return [(axis, ONE), None]
    if axis < ax + len(idx):
        return [None, (axis - ax, ONE)]
    return [(axis - len(idx) + 1, ONE), None]


def gather_elements(g: Graph, n: Node, k: int, axis: int):
    """Output [i][j] reads data [i][idx[i][j]] (axis 1): off the gather axis, row i of the output
    is row i of data, so data is cut with the indices; with fewer index rows than data rows the
    two lengths differ and no common cut exists."""
    data = _shape(g, n.inputs[0])
    ax = _norm(n.attr("axis", 0), len(data))
    if axis == ax:
        return [None, (axis, ONE)]
    if data[axis] != _shape(g, n.outputs[0])[axis]:
        return MIX
    return [(axis, ONE), (axis, ONE)]


def same_size_only(g: Graph, n: Node, k: int, axis: int):
    """Tile: legal on a dim the op leaves unchanged (Pad and Resize have their own rules)."""
    src, dst = _shape(g, n.inputs[0]), _shape(g, n.outputs[0])
    if src[axis] != dst[axis]:
        return MIX
    return [(axis, ONE)] + [None] * (len(n.inputs) - 1)


def resize(g: Graph, n: Node, k: int, axis: int):
    """Legal on batch and channel dims the op leaves unchanged: interpolation reads neighbours."""
    return MIX if axis >= 2 else same_size_only(g, n, k, axis)


def pad(g: Graph, n: Node, k: int, axis: int):
    """Legal on a dim padded by nothing at either end. Size alone is not enough: pads (+1, -1)
    keep the size and shift the rows by one."""
    rank = len(_shape(g, n.inputs[0]))
    if g.opset >= 11:
        pads = g.const_value(n.inputs[1]) if len(n.inputs) > 1 and n.inputs[1] else None
        axes_in = n.inputs[3] if len(n.inputs) > 3 and n.inputs[3] else None
        axes = g.const_value(axes_in) if axes_in else np.arange(rank)
    else:
        pads, axes = n.attr("pads"), np.arange(rank)
    if pads is None or axes is None:
        return MIX  # pads or axes computed at run time
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    axes = [_norm(int(a), rank) for a in np.asarray(axes).reshape(-1)]
    if len(pads) != 2 * len(axes):
        return MIX
    if any(a == axis and (pads[i] or pads[i + len(axes)]) for i, a in enumerate(axes)):
        return MIX
    return [(axis, ONE)] + [None] * (len(n.inputs) - 1)


def conv(g: Graph, n: Node, k: int, axis: int):
    w = _shape(g, n.inputs[1])
    rest = [None] * (len(n.inputs) - 2)
    if axis == 0:
        return [(0, ONE), None] + rest
    if axis == 1 and n.op_type == "Conv" and n.attr("group", 1) == 1:
        return [None, (0, ONE)] + [(0, ONE)] * len(rest)
    pointwise = all(d == 1 for d in w[2:]) and all(s == 1 for s in (n.attr("strides") or [1])) \
        and all(p == 0 for p in (n.attr("pads") or [0])) and n.attr("auto_pad", "NOTSET") in ("NOTSET", "VALID")
    if n.op_type == "Conv" and axis >= 2 and pointwise:
        return [(axis, ONE), None] + rest
    return MIX


def reduce(g: Graph, n: Node, k: int, axis: int):
    src = _shape(g, n.inputs[0])
    rank = len(src)
    if n.op_type in ("ArgMax", "ArgMin"):
        axes = [n.attr("axis", 0)]
    elif len(n.inputs) > 1 and n.inputs[1]:
        v = g.const_value(n.inputs[1])
        if v is None:
            return MIX
        axes = [int(a) for a in v.reshape(-1)]
    else:
        axes = n.attr("axes")
    if axes is None or len(axes) == 0:
        if n.attr("noop_with_empty_axes", 0):
            return [(axis, ONE)] + [None] * (len(n.inputs) - 1)
        return MIX
    axes = sorted(_norm(a, rank) for a in axes)
    if n.attr("keepdims", 1):
        if axis in axes:
            return MIX
        j = axis
    else:
        kept = [a for a in range(rank) if a not in axes]
        j = kept[axis]
    return [(j, ONE)] + [None] * (len(n.inputs) - 1)


def attention(g: Graph, n: Node, k: int, axis: int):
    """opset-23 Attention: the query-sequence dim of Q (and of the mask); K and V whole."""
    if k != 0 or n.attr("is_causal", 0):
        return MIX
    q = _shape(g, n.inputs[0])
    seq_axis = 2 if len(q) == 4 else 1
    res: list[Optional[InCut]] = [None] * len(n.inputs)
    if axis == seq_axis:
        res[0] = (seq_axis, ONE)
        if len(n.inputs) > 3 and n.inputs[3]:
            m = _shape(g, n.inputs[3])
            res[3] = (len(m) - 2, ONE) if m[-2] == q[seq_axis] and q[seq_axis] != 1 else None
        return res
    if axis == 0:
        for i in range(min(3, len(n.inputs))):
            res[i] = (0, ONE) if _shape(g, n.inputs[i])[0] == q[0] else None
        if len(n.inputs) > 3 and n.inputs[3]:
            m = _shape(g, n.inputs[3])
            res[3] = (0, ONE) if len(m) == 4 and m[0] == q[0] and q[0] != 1 else None
        return res
    return MIX
