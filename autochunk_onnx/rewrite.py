"""Rewrite each planned region into a standard ONNX `Loop`.

Outer graph: the chunk count comes from the run-time length of a sliced input (so the model still
takes other lengths), `trip = ceil(units / chunk)`, one empty sequence per region output. Body:
`start = i*chunk`, `end = min(start+chunk, units)`; each cut input is `Slice`d on its own axis;
the region's nodes run on the slices, reading weights and whole tensors from the outer scope;
each output chunk is appended to its sequence. After the loop `ConcatFromSequence` joins the
chunks under the original output name. The uneven last chunk needs nothing special.
Shape inputs (`OpInfo.shape_input`: Reshape, Expand, ConstantOfShape) are patched in the body so
the chunked dim reads the chunk's length; ops with a position rule (`OpInfo.position`) emit their
own body nodes from the chunk's start. Chunk tensors are declared in the body's value_info with a
symbolic chunk dim: without it ORT does not reuse buffers in the body (measured: the body's peak
then counts every chunk tensor on its own).

The rewrite consumes the plan as it is (loops, dropped nodes) and re-derives nothing. It
requires the pinned graph the plan was made on to list the original's nodes in the same order
(checked), and ensures the rewritten model passes `onnx.checker` whenever the original does
(checked on their weightless skeletons).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import ops
from .chunkflow import Cut
from .errors import BadInputError
from .graph import Graph, Node
from .graphutil import all_graphs, opset_import, outer_reads, skeleton, stable_toposort
from .plan import Loop
from .uniform import uniform_nodes

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
    outer: list | None = None  # nodes run once before the Loop (None: the rule may not add any)

    def const(self, base: str, values, dtype=np.int64) -> str:
        """A Constant node in the body; returns its output name."""
        return _const(self.body, self.names, f"{self.tag}/{base}", values, dtype)


def rewrite(original: onnx.ModelProto, graph: Graph, loops: list[Loop] | tuple[Loop, ...],
            dropped: frozenset[int] = frozenset()) -> onnx.ModelProto:
    """Return a copy of `original` (unpinned) with every loop of the plan emitted as an ONNX Loop
    and the `dropped` nodes left out.

    `graph` is the pinned, shape-inferred index the plan was made on; the shapes at a second
    pinning (`graph.session.dynamic`) say which dims vary with the inputs: those are declared
    symbolic in the bodies.
    """
    model = onnx.ModelProto()
    model.CopyFrom(original)
    if not loops:
        return model
    _require_same_nodes(original, graph)
    opset = opset_import(model)
    if opset is None or opset.version < MIN_OPSET:
        raise BadInputError(f"chunking needs opset >= {MIN_OPSET} (Loop over sequences); the model has opset {opset.version if opset else 'none'}")
    names = _Names(model)
    removed = set(dropped) | {n.index for lp in loops for n in lp.region.owned}
    emitted: dict[int, list[onnx.NodeProto]] = {}
    for r_i, lp in enumerate(loops):
        emitted[lp.region.end_index] = _Emitter(graph, lp, f"chunk{r_i}", names, graph.session.dynamic or {}).emit()
    new_nodes: list[tuple[int, onnx.NodeProto]] = []
    for i, n in enumerate(original.graph.node):
        if i in emitted:
            new_nodes += [(i, e) for e in emitted[i]]
        if i not in removed:
            new_nodes.append((i, n))
    del model.graph.node[:]
    model.graph.node.extend(_toposort(new_nodes))
    _ensure_valid(model, original)
    return model


def _require_same_nodes(original: onnx.ModelProto, graph: Graph) -> None:
    """The plan names nodes by their index in `graph`: it must be the original's node list."""
    nodes = original.graph.node
    if len(nodes) != len(graph.nodes) or any(a.op_type != b.op_type for a, b in zip(nodes, graph.model.graph.node)):
        raise ValueError("the plan was made on another graph than the model being rewritten")


def _ensure_valid(model: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """The rewritten model passes onnx.checker wherever the original does (weights never read)."""
    try:
        onnx.checker.check_model(skeleton(model)[0])
    except onnx.checker.ValidationError as e:
        try:
            onnx.checker.check_model(skeleton(original)[0])
        except onnx.checker.ValidationError:
            return  # the input already fails the checker: nothing to hold the rewrite to
        raise RuntimeError(f"the rewritten model fails onnx.checker: {str(e).splitlines()[0]}") from None


class _Emitter:
    """The nodes of one loop: prologue (trip count, empty sequences) in the outer graph, then in
    the body the chunk's bounds, the slices, the region's nodes, the sequence inserts; the Loop
    node and the joins (epilogue) after it. Names are taken in that order (stable output)."""

    def __init__(self, graph: Graph, lp: Loop, tag: str, names: _Names, dynamic: dict):
        self.graph, self.r, self.chunk_size, self.tag, self.names, self.dynamic = graph, lp.region, lp.chunk, tag, names, dynamic
        self.rows = lp.rows  # a length range: rows per iteration computed from the run-time length
        self.outer: list[onnx.NodeProto] = []
        self.body: list[onnx.NodeProto] = []
        self.value_info: list[onnx.ValueInfoProto] = []
        self.scaled: dict[int, tuple[str, str, str]] = {}

    def emit(self) -> list[onnx.NodeProto]:
        seqs = self.prologue()
        self.bounds_in_body()
        slice_name = self.slices()
        rename = self.region_nodes(slice_name)
        return self.epilogue(seqs, rename)

    def const(self, nodes: list, base: str, values, dtype=np.int64) -> str:
        return _const(nodes, self.names, f"{self.tag}/{base}", values, dtype)

    def prologue(self) -> list[str]:
        """Outer graph: units (run-time length of the cut), chunk, trip count, empty sequences."""
        r, names, tag, outer = self.r, self.names, self.tag, self.outer
        if r.slices:
            ref, cut = r.slices[0]
            shp = names(f"{tag}/shape")
            outer.append(helper.make_node("Shape", [ref], [shp], name=shp))
            ax = self.const(outer, "axis", [cut.axis])
            length = names(f"{tag}/length")
            outer.append(helper.make_node("Gather", [shp, ax], [length], name=length, axis=0))
            if cut.scale != 1:
                sc = self.const(outer, "scale", [int(cut.scale)])
                self.units = names(f"{tag}/units")
                outer.append(helper.make_node("Div", [length, sc], [self.units], name=self.units))
            else:
                self.units = length
        else:
            self.units = self.const(outer, "units", [r.units])
        if self.rows is None:
            self.chunk = self.const(outer, "chunk", [self.chunk_size])
            cm1 = self.const(outer, "chunk_minus_1", [self.chunk_size - 1])
        else:
            cm1 = self.runtime_chunk()
        # "t2" is taken but unused: it keeps every later name, and so the output, as it was
        t1, _t2, trip1, self.trip = (names(f"{tag}/{s}") for s in ("t1", "t2", "trip1d", "trip"))
        empty_shape = self.const(outer, "scalar_shape", np.zeros((0,), np.int64))
        outer += [
            helper.make_node("Add", [self.units, cm1], [t1], name=t1),
            helper.make_node("Div", [t1, self.chunk], [trip1], name=trip1),
            helper.make_node("Reshape", [trip1, empty_shape], [self.trip], name=self.trip),
        ]
        seqs = []
        for o in r.outputs:
            s = names(f"{tag}/seq_init")
            outer.append(helper.make_node("SequenceEmpty", [], [s], name=s, dtype=self.graph.info(o).elem_type))
            seqs.append(s)
        return seqs

    def runtime_chunk(self) -> str:
        """Outer graph, for a length range: chunk = max(1, k // L), L = Shape(input)[dim]; returns
        chunk - 1 (the trip count's rounding). Where the chunk reaches the whole cut, one iteration."""
        rows, names, tag, outer = self.rows, self.names, self.tag, self.outer
        shp, length, q, self.chunk, cm1 = (names(f"{tag}/{s}") for s in ("range_shape", "range_length", "rows_q",
                                                                          "chunk", "chunk_minus_1"))
        dim = self.const(outer, "range_dim", [rows.dim])
        k = self.const(outer, "rows_k", [rows.k])
        one = self.const(outer, "one", [1])
        outer += [
            helper.make_node("Shape", [rows.input], [shp], name=shp),
            helper.make_node("Gather", [shp, dim], [length], name=length, axis=0),
        ]
        if rows.power == 2:
            sq = names(f"{tag}/range_length_sq")
            outer.append(helper.make_node("Mul", [length, length], [sq], name=sq))
            length = sq
        outer += [
            helper.make_node("Div", [k, length], [q], name=q),
            helper.make_node("Max", [q, one], [self.chunk], name=self.chunk),
            helper.make_node("Sub", [self.chunk, one], [cm1], name=cm1),
        ]
        return cm1

    def bounds_in_body(self) -> None:
        """Body: start = i*chunk, end = min(start+chunk, units), len = end-start (1-D int64)."""
        names, tag, body = self.names, self.tag, self.body
        self.it, self.cond = names(f"{tag}/iter"), names(f"{tag}/cond")
        it1 = names(f"{tag}/iter1d")
        zero = self.const(body, "zero", [0])
        body.append(helper.make_node("Unsqueeze", [self.it, zero], [it1], name=it1))
        self.start, end0, self.end, self.clen = (names(f"{tag}/{s}") for s in ("start", "end_unclipped", "end", "len"))
        body += [
            helper.make_node("Mul", [it1, self.chunk], [self.start], name=self.start),
            helper.make_node("Add", [self.start, self.chunk], [end0], name=end0),
            helper.make_node("Min", [end0, self.units], [self.end], name=self.end),
            helper.make_node("Sub", [self.end, self.start], [self.clen], name=self.clen),
        ]

    def bounds(self, scale: int) -> tuple[str, str, str]:
        """(start, end, length) in elements of a tensor cut with `scale` elements per unit."""
        if scale == 1:
            return self.start, self.end, self.clen
        if scale not in self.scaled:
            names, tag = self.names, self.tag
            k = self.const(self.body, f"scale{scale}", [scale])
            s2, e2, l2 = names(f"{tag}/start_x{scale}"), names(f"{tag}/end_x{scale}"), names(f"{tag}/len_x{scale}")
            self.body.extend([helper.make_node("Mul", [self.start, k], [s2], name=s2),
                              helper.make_node("Mul", [self.end, k], [e2], name=e2),
                              helper.make_node("Mul", [self.clen, k], [l2], name=l2)])
            self.scaled[scale] = (s2, e2, l2)
        return self.scaled[scale]

    def slices(self) -> dict[tuple[str, Cut], str]:
        """Each sliced input's chunk, cut on its own axis."""
        slice_name: dict[tuple[str, Cut], str] = {}
        for t, c in self.r.slices:
            s0, e0, _ = self.bounds(int(c.scale))
            ax = self.const(self.body, "slice_axis", [c.axis])
            out = self.names(f"{t}/{self.tag}_slice")
            self.body.append(helper.make_node("Slice", [t, s0, e0, ax], [out], name=out))
            slice_name[(t, c)] = out
            self.value_info.append(_chunk_vi(self.graph, t, out, c, self.tag, self.dynamic))
        return slice_name

    def region_nodes(self, slice_name: dict) -> dict[str, str]:
        """The region's nodes on the chunks, reading weights and whole tensors from outside;
        returns the body name of every tensor they produce."""
        r, names, tag = self.r, self.names, self.tag
        rename: dict[str, str] = {}
        for n in r.body:
            for o in n.outputs:
                if o:
                    rename[o] = names(f"{o}/{tag}")
        uniform = uniform_nodes(self.graph, r)
        for n in r.body:
            new = onnx.NodeProto()
            new.CopyFrom(n.proto)
            new.name = names(f"{n.name}/{tag}")
            if n.index in uniform:  # one number broadcast: emitted as that number (see uniform.py)
                if n.op_type == "Expand":
                    new = helper.make_node("Identity", [n.inputs[0]], [rename[n.outputs[0]]], name=new.name)
                elif n.op_type == "ConstantOfShape":
                    value = n.attr("value")
                    value = value if value is not None else numpy_helper.from_array(np.zeros(1, np.float32))
                    new = helper.make_node("Constant", [], [rename[n.outputs[0]]], name=new.name, value=value)
                else:
                    del new.input[:]
                    new.input.extend(rename.get(i, i) for i in n.inputs)
                    del new.output[:]
                    new.output.append(rename[n.outputs[0]])
                self.body.append(new)
                continue
            cuts = r.in_cuts.get(n.index)
            out_cut = r.cuts.get(n.outputs[0]) if n.outputs else None
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
                if out_cut is not None and ops.info(n).shape_input == k and n.index not in r.value_nodes:
                    src = self.patch_shape(n, src, out_cut)
                new.input.append(src)
            del new.output[:]
            new.output.extend(rename.get(o, o) if o else "" for o in n.outputs)
            position = ops.info(n).position
            if position is not None and out_cut is not None and n.index not in r.value_nodes:
                s0, _, ln = self.bounds(int(out_cut.scale))
                position(PositionPatch(self.graph, n, new, out_cut, s0, ln, self.body, names, tag, self.outer))
            else:
                self.body.append(new)
            for o in n.outputs:
                if o in r.cuts:
                    self.value_info.append(_chunk_vi(self.graph, o, rename[o], r.cuts[o], tag, self.dynamic))
        return rename

    def patch_shape(self, n: Node, shape_in: str, out_cut: Cut) -> str:
        """Set the chunked dim of a shape-valued input to the chunk's length."""
        length = self.bounds(int(out_cut.scale))[2]
        out_rank = len(self.graph.shape(n.outputs[0]))
        shape_len = self.graph.shape(n.inputs[ops.info(n).shape_input])[0]
        pos = out_cut.axis - (out_rank - shape_len)
        if pos < 0:
            return shape_in
        mask = np.zeros(shape_len, dtype=bool)
        mask[pos] = True
        m = self.const(self.body, "shape_mask", mask, dtype=bool)
        out = self.names(f"{shape_in}/{self.tag}_patched")
        self.body.append(helper.make_node("Where", [m, length, shape_in], [out], name=out))
        return out

    def epilogue(self, seqs: list[str], rename: dict[str, str]) -> list[onnx.NodeProto]:
        """Append each output chunk to its sequence; the Loop node; ConcatFromSequence after it."""
        r, names, tag, graph, body = self.r, self.names, self.tag, self.graph, self.body
        seq_in = [names(f"{tag}/seq_in") for _ in r.outputs]
        seq_out = [names(f"{tag}/seq_out") for _ in r.outputs]
        for o, si, so in zip(r.outputs, seq_in, seq_out):
            body.append(helper.make_node("SequenceInsert", [si, rename[o]], [so], name=so))
        cond_out = names(f"{tag}/cond_out")
        body.append(helper.make_node("Identity", [self.cond], [cond_out], name=cond_out))
        b_inputs = [helper.make_tensor_value_info(self.it, TensorProto.INT64, []),
                    helper.make_tensor_value_info(self.cond, TensorProto.BOOL, [])]
        b_inputs += [helper.make_tensor_sequence_value_info(s, graph.info(o).elem_type, None) for s, o in zip(seq_in, r.outputs)]
        b_outputs = [helper.make_tensor_value_info(cond_out, TensorProto.BOOL, [])]
        b_outputs += [helper.make_tensor_sequence_value_info(s, graph.info(o).elem_type, None) for s, o in zip(seq_out, r.outputs)]
        body_graph = helper.make_graph(body, f"{tag}_body", b_inputs, b_outputs, value_info=self.value_info)
        finals = [names(f"{tag}/seq_final") for _ in r.outputs]
        loop_name = names(f"{tag}/Loop")
        outer = self.outer
        outer.append(helper.make_node("Loop", [self.trip, ""] + seqs, finals, name=loop_name, body=body_graph,
                                      doc_string=f"autochunk: {len(r.body)} nodes, {r.units} units along axis "
                                                 f"{r.cuts[r.end].axis} of {r.end}, chunk {self._chunk_doc()}"))
        for o, f in zip(r.outputs, finals):
            outer.append(helper.make_node("ConcatFromSequence", [f], [o], name=names(f"{tag}/join"), axis=r.cuts[o].axis, new_axis=0))
        return outer


    def _chunk_doc(self) -> str:
        if self.rows is None:
            return str(self.chunk_size)
        den = "L" if self.rows.power == 1 else f"L^{self.rows.power}"
        return (f"max(1, {self.rows.k} // {den}), L = dim {self.rows.dim} of {self.rows.input} ({self.chunk_size} at the "
                f"planned length)")


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


def _toposort(items: list[tuple[int, onnx.NodeProto]]) -> list[onnx.NodeProto]:
    """Stable topological sort (original position first), reading subgraph outer references too."""
    try:
        order = stable_toposort([pos for pos, _ in items], [list(n.input) + outer_reads(n) for _, n in items],
                                [n.output for _, n in items])
    except ValueError:
        raise RuntimeError("rewrite produced a cycle") from None
    return [items[k][1] for k in order]
