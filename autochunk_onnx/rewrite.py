"""Rewrite each planned region into a standard ONNX `Loop`.

Outer graph: the chunk count comes from the run-time length of a sliced input (so the model still
takes other lengths), `trip = ceil(units / chunk)`, one empty sequence per region output. Body:
`start = i*chunk`, `end = min(start+chunk, units)`; each cut input is `Slice`d on its own axis;
the region's nodes run on the slices, reading weights and whole tensors from the outer scope;
each output chunk is appended to its sequence. After the loop `ConcatFromSequence` joins the
chunks under the original output name. The uneven last chunk needs nothing special.
Shape-valued inputs of Reshape/Expand/ConstantOfShape are patched in the body so the chunked
dim reads the chunk's length. Chunk tensors are declared in the body's value_info with a
symbolic chunk dim: without it ORT does not reuse buffers in the body (design notes, section 3).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import ops
from .chunkflow import Cut, Region
from .errors import BadInputError
from .graph import Graph, Node
from .graphutil import all_graphs, opset_import, outer_reads
from .schedule import dead_nodes

MIN_OPSET = 13  # Loop with sequence-typed loop-carried values


class _Names:
    """Fresh tensor names that collide with nothing in the model."""

    def __init__(self, model: onnx.ModelProto):
        self.used = set()
        for g in all_graphs(model.graph):
            self.used.update(o for n in g.node for o in n.output)
            self.used.update(i.name for i in g.input)
            self.used.update(t.name for t in g.initializer)
            self.used.update(o.name for o in g.output)

    def __call__(self, base: str) -> str:
        name, k = base, 0
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name


def _const(nodes: list, names: _Names, base: str, values, dtype=np.int64) -> str:
    out = names(base)
    nodes.append(helper.make_node("Constant", [], [out], name=out, value=numpy_helper.from_array(np.asarray(values, dtype=dtype), out)))
    return out


@dataclass
class PositionPatch:
    """What a position rule (`OpInfo.position`, issue 11) gets to emit one body node whose values
    depend on the absolute index along the cut (Trilu, Range, ...): the node as copied into the
    body (inputs and outputs already renamed), the cut of its first output, the names of the
    chunk's start and length along that cut (1-D int64 tensors, in elements of the output), and
    the body to append to. The rule appends nodes that compute `proto`'s outputs."""

    graph: Graph
    node: Node
    proto: onnx.NodeProto
    cut: Cut
    start: str
    length: str
    body: list
    names: "_Names"
    tag: str

    def const(self, base: str, values, dtype=np.int64) -> str:
        """A Constant node in the body; returns its output name."""
        return _const(self.body, self.names, f"{self.tag}/{base}", values, dtype)


def portable(graph: Graph, region: Region, dynamic: dict[str, tuple] | None) -> bool:
    """Whether the region's Loop stays right at other input sizes.

    Slice bounds and patched shapes use each cut's elements-per-unit as a constant. When a dim
    merges the cut with a dynamic one ([batch*seq] cut by batch), that constant changes with the
    input and the Loop would be wrong at any other length: such regions are not planned. Nor
    are loops that slice nothing along a dynamic dim (their trip count would be a constant).
    `dynamic` holds every tensor's shape at a second pinning (dynamic input dims doubled).
    """
    if not region.slices:
        # the trip count is then a constant: right only if the cut dim never changes
        end = dynamic.get(region.end) if dynamic else None
        c = region.cuts[region.end]
        if end is None or end[c.axis] != graph.shape(region.end)[c.axis]:
            return False
    if not dynamic:
        return all(c.scale == 1 for c in list(region.cuts.values()) + [c for _, c in region.slices])
    ratio = None
    for t, c in list(region.cuts.items()) + list(region.slices):
        s1, s2 = graph.shape(t), dynamic.get(t)
        if s2 is None or len(s2) != len(s1):
            if c.scale != 1:
                return False
            continue
        r = Fraction(s2[c.axis], s1[c.axis])
        if ratio is not None and r != ratio:
            return False
        ratio = r
    return True


def rewrite(original: onnx.ModelProto, graph: Graph, regions: list[Region], dynamic: dict[str, list[bool]] | None = None) -> onnx.ModelProto:
    """Return a copy of `original` (unpinned) with every region turned into a Loop.

    `graph` is the pinned, shape-inferred index the plan was made on (same node order).
    `dynamic[t]` is tensor t's shape at a second pinning of the inputs: dims that differ vary with
    the inputs and are declared symbolic in the body.
    """
    model = onnx.ModelProto()
    model.CopyFrom(original)
    if not regions:
        return model
    opset = opset_import(model)
    if opset is None or opset.version < MIN_OPSET:
        raise BadInputError(f"chunking needs opset >= {MIN_OPSET} (Loop over sequences); the model has opset {opset.version if opset else 'none'}")
    names = _Names(model)
    in_region: dict[int, int] = {}
    for r_i, r in enumerate(regions):
        for n in r.owned:
            in_region[n.index] = r_i
    for i in dead_nodes(graph, regions):
        in_region[i] = -1  # every reader recomputes it in a loop: drop it
    emitted: dict[int, list[onnx.NodeProto]] = {}
    for r_i, r in enumerate(regions):
        emitted[r.end_index] = _emit_region(graph, r, r_i, names, dynamic or {})
    old = list(model.graph.node)
    new_nodes: list[tuple[int, onnx.NodeProto]] = []
    for i, n in enumerate(old):
        if i in emitted:
            new_nodes += [(i, e) for e in emitted[i]]
        if i not in in_region:
            new_nodes.append((i, n))
    del model.graph.node[:]
    model.graph.node.extend(_toposort(new_nodes, model.graph))
    return model


def _emit_region(graph: Graph, r: Region, r_i: int, names: _Names, dynamic: dict) -> list[onnx.NodeProto]:
    tag = f"chunk{r_i}"
    outer: list[onnx.NodeProto] = []
    # --- outer: units (run-time length of the cut), trip count, empty sequences
    if r.slices:
        ref, cut = r.slices[0]
        shp = names(f"{tag}/shape")
        outer.append(helper.make_node("Shape", [ref], [shp], name=shp))
        ax = _const(outer, names, f"{tag}/axis", [cut.axis])
        length = names(f"{tag}/length")
        outer.append(helper.make_node("Gather", [shp, ax], [length], name=length, axis=0))
        if cut.scale != 1:
            sc = _const(outer, names, f"{tag}/scale", [int(cut.scale)])
            units = names(f"{tag}/units")
            outer.append(helper.make_node("Div", [length, sc], [units], name=units))
        else:
            units = length
    else:
        units = _const(outer, names, f"{tag}/units", [r.units])
    chunk = _const(outer, names, f"{tag}/chunk", [r.chunk])
    cm1 = _const(outer, names, f"{tag}/chunk_minus_1", [r.chunk - 1])
    t1, t2, trip1, trip = (names(f"{tag}/{s}") for s in ("t1", "t2", "trip1d", "trip"))
    empty_shape = _const(outer, names, f"{tag}/scalar_shape", np.zeros((0,), np.int64))
    outer += [
        helper.make_node("Add", [units, cm1], [t1], name=t1),
        helper.make_node("Div", [t1, chunk], [trip1], name=trip1),
        helper.make_node("Reshape", [trip1, empty_shape], [trip], name=trip),
    ]
    seqs = []
    for o in r.outputs:
        s = names(f"{tag}/seq_init")
        outer.append(helper.make_node("SequenceEmpty", [], [s], name=s, dtype=graph.info(o).elem_type))
        seqs.append(s)
    # --- body
    body: list[onnx.NodeProto] = []
    it, cond = names(f"{tag}/iter"), names(f"{tag}/cond")
    it1 = names(f"{tag}/iter1d")
    zero = _const(body, names, f"{tag}/zero", [0])
    body.append(helper.make_node("Unsqueeze", [it, zero], [it1], name=it1))
    start, end0, end, clen = (names(f"{tag}/{s}") for s in ("start", "end_unclipped", "end", "len"))
    body += [
        helper.make_node("Mul", [it1, chunk], [start], name=start),
        helper.make_node("Add", [start, chunk], [end0], name=end0),
        helper.make_node("Min", [end0, units], [end], name=end),
        helper.make_node("Sub", [end, start], [clen], name=clen),
    ]
    scaled: dict[int, tuple[str, str, str]] = {}

    def bounds(scale: int) -> tuple[str, str, str]:
        """(start, end, length) in elements of a tensor cut with `scale` elements per unit."""
        if scale == 1:
            return start, end, clen
        if scale not in scaled:
            k = _const(body, names, f"{tag}/scale{scale}", [scale])
            s2, e2, l2 = names(f"{tag}/start_x{scale}"), names(f"{tag}/end_x{scale}"), names(f"{tag}/len_x{scale}")
            body.extend([helper.make_node("Mul", [start, k], [s2], name=s2), helper.make_node("Mul", [end, k], [e2], name=e2),
                         helper.make_node("Mul", [clen, k], [l2], name=l2)])
            scaled[scale] = (s2, e2, l2)
        return scaled[scale]

    rename: dict[str, str] = {}
    slice_name: dict[tuple[str, Cut], str] = {}
    value_info = []
    for t, c in r.slices:
        s0, e0, _ = bounds(int(c.scale))
        ax = _const(body, names, f"{tag}/slice_axis", [c.axis])
        out = names(f"{t}/{tag}_slice")
        body.append(helper.make_node("Slice", [t, s0, e0, ax], [out], name=out))
        slice_name[(t, c)] = out
        value_info.append(_chunk_vi(graph, t, out, c, tag, dynamic))
    for n in r.body:
        for o in n.outputs:
            if o:
                rename[o] = names(f"{o}/{tag}")
    for n in r.body:
        new = onnx.NodeProto()
        new.CopyFrom(n.proto)
        new.name = names(f"{n.name}/{tag}")
        cuts = r.in_cuts.get(n.index)
        del new.input[:]
        for k, i in enumerate(n.inputs):
            if not i:
                new.input.append("")
                continue
            c = cuts[k] if cuts else None
            if i in rename:
                src = rename[i]
            elif c is not None:
                src = slice_name[(i, c)]
            else:
                src = i  # outer scope: weights, whole tensors
            out_cut = r.cuts.get(n.outputs[0]) if n.outputs else None
            if out_cut is not None and ops.info(n).shape_input == k and n.index not in r.value_nodes:
                src = _patch_shape(graph, n, src, out_cut, bounds(int(out_cut.scale))[2], body, names, tag)
            new.input.append(src)
        del new.output[:]
        new.output.extend(rename.get(o, o) if o else "" for o in n.outputs)
        position = ops.info(n).position
        out_cut = r.cuts.get(n.outputs[0]) if n.outputs else None
        if position is not None and out_cut is not None and n.index not in r.value_nodes:
            s0, _, ln = bounds(int(out_cut.scale))
            position(PositionPatch(graph, n, new, out_cut, s0, ln, body, names, tag))
        else:
            body.append(new)
        for o in n.outputs:
            if o in r.cuts:
                value_info.append(_chunk_vi(graph, o, rename[o], r.cuts[o], tag, dynamic))
    seq_in = [names(f"{tag}/seq_in") for _ in r.outputs]
    seq_out = [names(f"{tag}/seq_out") for _ in r.outputs]
    for o, si, so in zip(r.outputs, seq_in, seq_out):
        body.append(helper.make_node("SequenceInsert", [si, rename[o]], [so], name=so))
    cond_out = names(f"{tag}/cond_out")
    body.append(helper.make_node("Identity", [cond], [cond_out], name=cond_out))
    b_inputs = [helper.make_tensor_value_info(it, TensorProto.INT64, []), helper.make_tensor_value_info(cond, TensorProto.BOOL, [])]
    b_inputs += [helper.make_tensor_sequence_value_info(s, graph.info(o).elem_type, None) for s, o in zip(seq_in, r.outputs)]
    b_outputs = [helper.make_tensor_value_info(cond_out, TensorProto.BOOL, [])]
    b_outputs += [helper.make_tensor_sequence_value_info(s, graph.info(o).elem_type, None) for s, o in zip(seq_out, r.outputs)]
    body_graph = helper.make_graph(body, f"{tag}_body", b_inputs, b_outputs, value_info=value_info)
    finals = [names(f"{tag}/seq_final") for _ in r.outputs]
    loop_name = names(f"{tag}/Loop")
    outer.append(helper.make_node("Loop", [trip, ""] + seqs, finals, name=loop_name, body=body_graph,
                                  doc_string=f"autochunk: {len(r.body)} nodes, {r.units} units along axis "
                                             f"{r.cuts[r.end].axis} of {r.end}, chunk {r.chunk}"))
    for o, f in zip(r.outputs, finals):
        outer.append(helper.make_node("ConcatFromSequence", [f], [o], name=names(f"{tag}/join"), axis=r.cuts[o].axis, new_axis=0))
    return outer


def _patch_shape(graph: Graph, n, shape_in: str, out_cut: Cut, length: str, body: list, names: _Names, tag: str) -> str:
    """Set the chunked dim of a shape-valued input to the chunk's length."""
    out_rank = len(graph.shape(n.outputs[0]))
    shape_len = graph.shape(n.inputs[ops.info(n).shape_input])[0]
    pos = out_cut.axis - (out_rank - shape_len)
    if pos < 0:
        return shape_in
    mask = np.zeros(shape_len, dtype=bool)
    mask[pos] = True
    m = _const(body, names, f"{tag}/shape_mask", mask, dtype=bool)
    out = names(f"{shape_in}/{tag}_patched")
    body.append(helper.make_node("Where", [m, length, shape_in], [out], name=out))
    return out


def _chunk_vi(graph: Graph, t: str, name: str, c: Cut, tag: str, dynamic: dict) -> onnx.ValueInfoProto:
    """Chunk shape for the body: the cut dim symbolic, dims that vary with the inputs named by
    their values at two pinnings (so equal dims share a name and ORT can prove buffers the same
    size, which in-place reuse needs), static dims as numbers."""
    info = graph.info(t)
    other = dynamic.get(t)
    dims: list = []
    for k, d in enumerate(info.shape):
        if k == c.axis:
            dims.append(f"{tag}_len" if c.scale == 1 else f"{tag}_len_x{int(c.scale)}")
        elif other is None:
            dims.append(f"dim_{d}")
        elif other[k] != d:
            dims.append(f"dim_{d}_{other[k]}")
        else:
            dims.append(d)
    return helper.make_tensor_value_info(name, info.elem_type, dims)


def _toposort(items: list[tuple[int, onnx.NodeProto]], g: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Stable topological sort (original position first), reading subgraph outer references too."""
    produced = {}
    for k, (_, n) in enumerate(items):
        for o in n.output:
            if o:
                produced[o] = k
    deps = [set() for _ in items]
    users = [[] for _ in items]
    for k, (_, n) in enumerate(items):
        for i in list(n.input) + outer_reads(n):
            p = produced.get(i)
            if p is not None and p != k and p not in deps[k]:
                deps[k].add(p)
                users[p].append(k)
    ready = [(items[k][0], k) for k in range(len(items)) if not deps[k]]
    heapq.heapify(ready)
    out = []
    while ready:
        _, k = heapq.heappop(ready)
        out.append(items[k][1])
        for u in users[k]:
            deps[u].discard(k)
            if not deps[u]:
                heapq.heappush(ready, (items[u][0], u))
    if len(out) != len(items):
        raise RuntimeError("rewrite produced a cycle")
    return out
