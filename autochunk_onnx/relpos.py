"""Relative-position chains computed once per distinct offset instead of once per [L, L] element.

An encoder with a relative position bias (T5, and models built like it) computes
`d = arange_k[None, :] - arange_q[:, None]` ([Lq, Lk]), then an elementwise chain on d (Abs, Log,
Min, Where: the buckets) and a Gather from a bias table, giving [Lq, Lk, H]. Every value of that
chain depends on d alone, and d takes only Lq + Lk - 1 values. So the chain is computed once on
the vector of those values (`D = arange(d_min, d_max + 1)`, [Lq + Lk - 1]) and each [Lq, Lk]
tensor read outside the chain becomes `Gather(chain(D), d - d_min)`. The results are identical
(the same elementwise ops on the same values), the [L, L] chain tensors never exist, and what is
left to build per chunk (two offset aranges, a Sub, an Add, a Gather from a [2L-1, H] vector) is
cheap enough for every layer's loop to rebuild its rows of the bias (chunkflow's recompute cones)
instead of reading a [1, H, L, L] tensor held across layers.

`apply(graph, model)` finds the pattern on the shape-inferred graph and returns a rewritten copy
of the model, or None when there is none.
"""
from __future__ import annotations

import onnx
from onnx import helper, numpy_helper

import numpy as np

from .graph import Graph

# Elementwise ops whose output at an index depends only on their inputs at that index (broadcast).
ELEMENTWISE = frozenset("""Abs Neg Cast Log Exp Sqrt Reciprocal Floor Ceil Round Sign Not Identity Relu
    Add Sub Mul Div Pow Min Max Mod Less LessOrEqual Greater GreaterOrEqual Equal And Or Xor Where Clip
    BitwiseAnd BitwiseOr BitwiseNot IsNaN IsInf Erf Tanh Sigmoid""".split())
_INT_TYPES = (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
MIN_SIDE = 2  # both sides of d at least this long


def _range_view(graph: Graph, t: str):
    """The Range node whose values `t` holds (through Unsqueeze/Identity), or None."""
    while True:
        p = graph.producer.get(t)
        if p is None:
            return None
        n = graph.nodes[p]
        if n.domain not in ("", "ai.onnx"):
            return None
        if n.op_type == "Range":
            delta = graph.const_value(n.inputs[2]) if len(n.inputs) > 2 else None
            if delta is None or delta.size != 1 or int(delta.reshape(-1)[0]) != 1:
                return None
            return n
        if n.op_type not in ("Unsqueeze", "Identity"):
            return None
        t = n.inputs[0]


def _orientation(shape) -> int | None:
    """Axis of the [L, L] result along which a broadcast arange view varies (rank 1 is a row)."""
    if shape is None:
        return None
    if len(shape) == 1:
        return 1
    if len(shape) == 2 and shape[0] == 1:
        return 1
    if len(shape) == 2 and shape[1] == 1:
        return 0
    return None


def _scalar(graph: Graph, t: str) -> bool:
    info = graph.info(t)
    return info is not None and info.shape is not None and len(info.shape) <= 1 and info.numel == 1


class _Chain:
    """One relative-position chain found in the graph."""

    def __init__(self, sub, rx, ry):
        self.sub, self.rx, self.ry = sub, rx, ry  # the Sub node, the Range of its first / second input
        self.tensors: list[str] = []  # tensors that depend on d alone, in order (d excluded)
        self.nodes: dict[int, None] = {}  # their producers
        self.frontier: dict[int, None] = {}  # Gathers from a table by one of them
        self.shape_nodes: dict[int, None] = {}  # Shape(t) of a chain tensor


def _find(graph: Graph) -> list[_Chain]:
    chains = []
    taken: set[int] = set()
    for n in graph.nodes:
        if n.op_type != "Sub" or n.domain not in ("", "ai.onnx") or n.index in taken or len(n.inputs) != 2:
            continue
        out = graph.info(n.outputs[0])
        if out is None or out.shape is None or len(out.shape) != 2 or out.elem_type not in _INT_TYPES \
                or min(out.shape) < MIN_SIDE:
            continue
        ox, oy = (_orientation(graph.shape(i)) for i in n.inputs)
        if ox is None or oy is None or ox == oy:
            continue
        rx, ry = (_range_view(graph, i) for i in n.inputs)
        if rx is None or ry is None:
            continue
        ch = _grow(graph, n, rx, ry)
        if ch is not None:
            chains.append(ch)
            taken.update(ch.nodes)
    return chains


def _grow(graph: Graph, sub, rx, ry) -> _Chain | None:
    """Forward from d through every node that depends on d alone; None when nothing follows it."""
    ch = _Chain(sub, rx, ry)
    shape = graph.shape(sub.outputs[0])
    chain = {sub.outputs[0]}
    shapes: set[str] = set()  # Shape(t) of chain tensors (full shape)
    for n in graph.nodes[sub.index + 1:]:
        if n.domain not in ("", "ai.onnx") or len(n.outputs) != 1 or not n.outputs[0]:
            continue
        ins = [i for i in n.inputs if i]
        if not any(i in chain or i in shapes for i in ins):
            continue
        o = n.outputs[0]
        if n.op_type == "Shape" and ins[0] in chain:
            if n.attr("start", 0) == 0 and n.attr("end") is None:
                shapes.add(o)
                ch.shape_nodes[n.index] = None
            continue
        if n.op_type == "Gather" and len(ins) == 2 and ins[1] in chain and ins[0] not in chain \
                and n.attr("axis", 0) == 0 and graph.shape(ins[0]) and len(graph.shape(ins[0])) >= 1:
            ch.frontier[n.index] = None
            continue
        same = graph.shape(o) == shape
        if n.op_type in ELEMENTWISE and same and all(i in chain or _scalar(graph, i) for i in ins):
            pass
        elif n.op_type == "ConstantOfShape" and same and ins[0] in shapes:
            pass
        elif n.op_type == "Expand" and same and len(ins) == 2 and ins[1] in shapes and _scalar(graph, ins[0]):
            pass
        else:
            continue
        chain.add(o)
        ch.tensors.append(o)
        ch.nodes[n.index] = None
    if not ch.nodes and not ch.frontier:
        return None
    return ch


def _fresh(names: set[str], base: str) -> str:
    name, k = base, 0
    while name in names:
        k += 1
        name = f"{base}_{k}"
    names.add(name)
    return name


def apply(graph: Graph, model: onnx.ModelProto) -> tuple[onnx.ModelProto, int] | None:
    """(a copy of `model` with every relative-position chain computed on its distinct offsets,
    how many chains), or None when `graph` (the model, shape-inferred) has none."""
    chains = _find(graph)
    if not chains:
        return None
    names = {o for n in graph.nodes for o in n.outputs} | {i for n in graph.nodes for i in n.inputs}
    names |= {t.name for t in model.graph.initializer} | {i.name for i in model.graph.input}
    before: dict[int, list] = {}  # original node index -> nodes emitted in its place
    inits = []
    for c, ch in enumerate(chains):
        d = ch.sub.outputs[0]
        dtype = graph.info(d).elem_type
        sx, lx = ch.rx.inputs[0], ch.rx.inputs[1]
        sy, ly = ch.ry.inputs[0], ch.ry.inputs[1]
        one = _fresh(names, f"relpos{c}_one")
        inits.append(numpy_helper.from_array(np.array(1, dtype=helper.tensor_dtype_to_np_dtype(dtype)), one))
        t1, off, neg, lim, vec, idx = (_fresh(names, f"{d}_relpos_{s}")
                                       for s in ("ly1", "offset", "start", "limit", "values", "index"))
        pfx = f"relpos{c}/"
        head = [
            helper.make_node("Sub", [ly, one], [t1], name=_fresh(names, pfx + "ly_minus_1")),
            helper.make_node("Sub", [t1, sx], [off], name=_fresh(names, pfx + "offset")),  # -d_min
            helper.make_node("Neg", [off], [neg], name=_fresh(names, pfx + "d_min")),
            helper.make_node("Sub", [lx, sy], [lim], name=_fresh(names, pfx + "d_max_plus_1")),
            helper.make_node("Range", [neg, lim, one], [vec], name=_fresh(names, pfx + "offsets")),
            helper.make_node("Add", [d, off], [idx], name=_fresh(names, pfx + "index")),
        ]
        before.setdefault(ch.sub.index, [ch.sub.proto]).extend(head)
        primed = {d: vec}
        inside = set(ch.nodes) | set(ch.frontier) | set(ch.shape_nodes)
        for i in sorted(inside):
            n = graph.nodes[i]
            p = onnx.NodeProto()
            p.CopyFrom(n.proto)
            emitted = []
            if i in ch.shape_nodes:  # the shape of any chain tensor is d's; kept only if read elsewhere
                p.input[0] = d
                o = n.outputs[0]
                kept = o in graph.output_names or any(r not in inside for r in graph.consumers.get(o, []))
                before[i] = [p] if kept else []
                continue
            for k, t in enumerate(n.inputs):
                if t in primed:
                    p.input[k] = primed[t]
                elif t and graph.producer.get(t) in ch.shape_nodes:  # ConstantOfShape/Expand target
                    src = graph.nodes[graph.producer[t]].inputs[0]
                    s = _fresh(names, f"{t}_relpos")
                    emitted.append(helper.make_node("Shape", [primed[src]], [s], name=_fresh(names, pfx + "shape")))
                    p.input[k] = s
            o = n.outputs[0]
            po = _fresh(names, f"{o}_relpos")
            primed[o] = po
            p.output[0] = po
            p.name = _fresh(names, (n.proto.name or n.op_type) + "_relpos")
            emitted.append(p)
            readers = [r for r in graph.consumers.get(o, []) if r not in inside]
            if i in ch.frontier or readers or o in graph.output_names:
                emitted.append(helper.make_node("Gather", [po, idx], [o], axis=0,
                                                name=_fresh(names, pfx + "gather")))
            before[i] = emitted
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = []
    for k, n in enumerate(model.graph.node):
        nodes.extend(before.get(k, [n]))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(inits)
    return out, len(chains)
