"""The chunk flow: trace one output dim backwards through a window of nodes.

Given the region's end tensor and a dim of it, each node's rule (dimrules) says which dim of each
input the chunk comes from. Walking the window in reverse order gives every tensor a requirement:

* `Cut(axis, scale)` - computed (or sliced) chunk by chunk along `axis`, `scale` elements per unit;
* `WHOLE` - needed in full: computed before the loop (hoisted) and read from the outer scope;
* `VALUE` - a small shape-valued tensor (Reshape target): computed inside the loop if it reads
  chunked tensors, else before it; shape inputs (`OpInfo.shape_input`) are patched in the body.

A node whose rule mixes the dim (softmax or reduction over it, a contraction, Concat on it), an
unknown or custom op, or a node feeding both chunked and whole consumers is computed whole: this
is how unknown ops bound a region instead of aborting the search.

Recomputation: a large sliced input made cheaply from much smaller tensors (an attention mask
[1,1,L,L] built by broadcasting [1,1,L,1] against [1,1,1,L], shared by every layer) is not read
from the outer scope but recomputed chunk by chunk in the body from those small tensors. The
original node stays for its other readers and disappears once every reader recomputes it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from math import lcm
from typing import Union

from . import ops
from .graph import Graph, Node
from .ops import MIX, trace_node

# A node's mode and a tensor's requirement: computed chunk by chunk (a `Cut` for tensors), needed
# whole, or a small shape value.
CHUNK = "CHUNK"
WHOLE = "WHOLE"
VALUE = "VALUE"

SMALL_VALUE = 64  # elements: a VALUE tensor must be tiny (computed by `OpInfo.shape_arith` ops)

# Recomputation: a cone of cheap ops (`OpInfo.clone`: no contraction, no reduction) is repeated per
# chunk when the tensor it makes is CLONE_MIN_BYTES or more and CLONE_GAIN times the bytes it reads.
# Position-aware ops (posrules: ConstantOfShape, Trilu, Range, offset Slices of a buffer) and
# Gathers from a small table join them: a mask or bias built in the graph is rebuilt per chunk.
CLONE_GAIN = 2
CLONE_MIN_BYTES = 1 << 16
CLONE_FLOOR = 256  # the cone grows through tensors with at least 1/256 of the made tensor's elements
MAX_CLONES = 32  # nodes recomputed per region (a T5 bucket chain is ~18)


@dataclass(frozen=True)
class Cut:
    axis: int
    scale: Fraction


@dataclass(frozen=True, eq=False)
class Region:
    """What one chunk loop computes: which nodes run in it, along which dim each tensor is cut,
    its outputs. Fixed once traced; the chunk size belongs to the plan (`plan.Loop`)."""

    end: str  # the tensor the region was traced from
    body: list[Node]  # in execution order
    hoisted: list[Node]  # window nodes needed whole, run before the loop
    cuts: dict[str, Cut]  # chunked tensors produced in the body
    in_cuts: dict[int, list[Cut | None]]  # body node index -> how each input is read
    outputs: list[str]  # produced in the body, needed after the loop
    units: int  # N: length of the cut, in units
    start_index: int  # window start (node index in graph order)
    end_index: int
    outer_reads: list[str] = field(default_factory=list)  # outer tensors read whole by the body
    slices: list[tuple[str, Cut]] = field(default_factory=list)  # outer tensors sliced in the body
    value_nodes: frozenset[int] = frozenset()  # body nodes computing shape values
    clones: frozenset[int] = frozenset()  # body nodes recomputed: their originals stay outside

    @property
    def inputs(self) -> list[str]:
        seen = dict.fromkeys([t for t in self.outer_reads] + [t for t, _ in self.slices])
        return list(seen)

    @property
    def nodes(self) -> set[int]:
        return {n.index for n in self.body}

    @property
    def owned(self) -> list[Node]:
        """Body nodes that move into the loop (recomputed clones excluded)."""
        return [n for n in self.body if n.index not in self.clones]


def _merge(a, b):
    if a is None:
        return b
    if b is None or a == b:
        return a
    return WHOLE


def trace_region(graph: Graph, order: list[int], end_pos: int, end_tensor: str, axis: int, start_pos: int,
                 opaque: set[int] = frozenset(), kept: frozenset[str] = frozenset()) -> Region | None:
    """Trace `end_tensor`'s `axis` back over `order[start_pos:end_pos+1]` (node indices).

    `opaque` are nodes that must not enter a loop (already chunked by an earlier stage); `kept`
    are tensors earlier loops read from outside: produced here, they must leave this loop whole.
    Returns None when no chunked region results (nothing cuttable, mismatched lengths).
    """
    flow = trace_flow(graph, order, end_pos, end_tensor, axis, start_pos, opaque, kept)
    return flow.region(start_pos)


class Flow:
    """The modes of every node in a window, traced once; `region(s)` cuts it at any start.

    A node's mode depends only on its consumers, which all come after it, so one backward pass
    serves every window start at once.
    """

    def __init__(self, graph, order, end_pos, end_tensor, mode, in_cuts, req, opaque=frozenset(), kept=frozenset()):
        self.graph, self.order, self.end_pos, self.end_tensor = graph, order, end_pos, end_tensor
        self.mode, self.in_cuts, self.req, self.opaque, self.kept = mode, in_cuts, req, opaque, kept

    def chunked(self, index: int) -> bool:
        """Whether node `index` is computed chunk by chunk in this flow."""
        return self.mode.get(index) == CHUNK

    def region(self, start_pos: int) -> Region | None:
        window = self.order[start_pos:self.end_pos + 1]
        keep = set(window)
        mode = {i: m for i, m in self.mode.items() if i in keep}
        return _build(self.graph, window, keep, self.end_tensor, mode, self.in_cuts, self.req,
                      self.order[start_pos], self.order[self.end_pos], self.opaque, self.kept)


def trace_flow(graph: Graph, order: list[int], end_pos: int, end_tensor: str, axis: int, start_pos: int,
               opaque: set[int] = frozenset(), kept: frozenset[str] = frozenset()) -> Flow:
    window = order[start_pos:end_pos + 1]
    req: dict[str, object] = {end_tensor: Cut(axis, Fraction(1))}
    mode: dict[int, str] = {}
    in_cuts: dict[int, list[Cut | None]] = {}
    for idx in reversed(window):
        n = graph.nodes[idx]
        used = [o for o in n.outputs if o and (o in graph.consumers or o in graph.output_names)]
        reqs = [req.get(o) for o in used]
        if all(r is None for r in reqs):
            continue
        m, cuts = _decide(graph, n, used, reqs, idx in opaque)
        mode[idx] = m
        if m == CHUNK:
            in_cuts[idx] = cuts
            for k, (i, c) in enumerate(zip(n.inputs, cuts)):
                if not i:
                    continue
                if c is not None:
                    req[i] = _merge(req.get(i), c)
                elif ops.info(n).shape_input == k:
                    req[i] = _merge(req.get(i), VALUE)
                else:
                    req[i] = _merge(req.get(i), WHOLE)
            for k in ops.info(n).whole_too:  # also read whole (com.microsoft Attention: K, V)
                if k < len(n.inputs) and n.inputs[k] and cuts[k] is not None:
                    req[n.inputs[k]] = _merge(req.get(n.inputs[k]), WHOLE)
        elif m == VALUE:
            if not ops.info(n).shape_output:
                for i in n.inputs:
                    if i:
                        req[i] = _merge(req.get(i), VALUE)
        else:
            for i in n.inputs:
                if i:
                    req[i] = _merge(req.get(i), WHOLE)
    return Flow(graph, order, end_pos, end_tensor, mode, in_cuts, req, opaque, kept)


def _decide(graph: Graph, n: Node, used: list[str], reqs: list, opaque: bool):
    """Mode of one node from its outputs' requirements: CHUNK (with input cuts), VALUE or WHOLE."""
    if opaque or any(r == WHOLE for r in reqs) or any(r is None for r in reqs):
        return WHOLE, None
    if all(r == VALUE for r in reqs):
        small = all((graph.info(o) is not None and graph.info(o).numel is not None and graph.info(o).numel <= SMALL_VALUE) for o in used)
        return (VALUE if ops.info(n).shape_arith and small else WHOLE), None
    if any(r == VALUE for r in reqs):
        return WHOLE, None
    result = None
    for o, r in zip(used, reqs):
        k = n.outputs.index(o)
        res = trace_node(graph, n, k, r.axis)
        if res == MIX:
            return WHOLE, None
        cuts = [None if c is None else Cut(c[0], r.scale * c[1]) for c in res]
        if result is not None and cuts != result:
            return WHOLE, None
        result = cuts
    return CHUNK, result


def _build(graph: Graph, window: list[int], in_window: set[int], end_tensor: str, mode: dict[int, str],
           in_cuts: dict[int, list], req: dict, start_index: int, end_index: int,
           opaque: set[int] = frozenset(), kept: frozenset[str] = frozenset()) -> Region | None:
    chunk_nodes = {i for i, m in mode.items() if m == CHUNK}
    if graph.producer.get(end_tensor) not in chunk_nodes:
        return None
    # VALUE nodes run in the loop when they read something produced in it (chunk shapes).
    in_loop = set(chunk_nodes) - _shared_cones(graph, chunk_nodes, end_tensor, req, kept)
    value_nodes = set()
    for idx in window:
        if mode.get(idx) == VALUE:
            if any(graph.producer.get(i) in in_loop for i in graph.nodes[idx].inputs if i):
                in_loop.add(idx)
                value_nodes.add(idx)
    body = [graph.nodes[i] for i in window if i in in_loop]
    hoisted = [graph.nodes[i] for i in window if i in mode and i not in in_loop]
    produced = {o for n in body for o in n.outputs if o}
    # Region outputs: produced in the loop, used after it.
    outputs = []
    for n in body:
        for o in n.outputs:
            if not o:
                continue
            outside = [c for c in graph.consumers.get(o, []) if c not in in_loop]
            if outside or o in graph.output_names or o in kept:
                if n.index in value_nodes or not isinstance(req.get(o), Cut):
                    return None  # a chunk-shaped value escaping the loop
                outputs.append(o)
    if end_tensor not in outputs:
        return None
    cuts = {t: r for t, r in req.items() if isinstance(r, Cut) and t in produced}
    slices: dict[tuple[str, Cut], None] = {}
    outer: dict[str, None] = {}
    body_cuts = {n.index: in_cuts[n.index] for n in body if n.index in in_cuts}
    for n in body:
        cs = body_cuts.get(n.index)
        for k, i in enumerate(n.inputs):
            if not i or i in produced:
                continue
            c = cs[k] if cs else None
            if c is not None:
                slices[(i, c)] = None
            else:
                outer[i] = None
    clones = _recompute(graph, slices, outer, in_loop | set(opaque), produced, cuts, body_cuts)
    if clones:
        body = sorted(body + [graph.nodes[i] for i in clones], key=lambda n: n.index)
    # Normalise scales so every cut length is a whole number of elements per unit.
    den = 1
    for c in list(cuts.values()) + [c for _, c in slices]:
        if c.scale.denominator != 1:
            den = lcm(den, c.scale.denominator)
    units = None
    for t, c in list(cuts.items()) + list(slices):
        shape = graph.shape(t)
        if shape is None:
            return None
        num, dd = shape[c.axis] * c.scale.denominator, c.scale.numerator * den
        if num % dd or (units is not None and units != num // dd):
            return None
        units = num // dd
    if units is None or units < 2:
        return None
    if den != 1:
        norm = lambda c: Cut(c.axis, c.scale * den)  # noqa: E731
        cuts = {t: norm(c) for t, c in cuts.items()}
        body_cuts = {i: [None if c is None else norm(c) for c in cs] for i, cs in body_cuts.items()}
        slices = {(t, norm(c)): None for t, c in slices}
    region = Region(
        end=end_tensor, body=body, hoisted=hoisted, cuts=cuts, in_cuts=body_cuts,
        outputs=outputs, units=units, start_index=start_index, end_index=end_index,
        outer_reads=list(outer), slices=list(slices), value_nodes=frozenset(value_nodes), clones=frozenset(clones),
    )
    return region


def _shared_cones(graph: Graph, chunk_nodes: set[int], end_tensor: str, req: dict,
                  kept: frozenset[str]) -> set[int]:
    """Chunk nodes to leave outside the loop: the cheap cone of a tensor that is also read after
    the loop (a zero or bias [B*H, L, L] built once and added in every layer, as the dynamo
    exporter shares diffusers' baddbmm `empty`). Owned by the loop it would be joined whole as an
    output, and no later loop could rebuild it any more; left outside, this loop rebuilds its
    chunks like any recomputable input (`_recompute`) and so can every other reader's."""
    out: set[int] = set()
    for idx in sorted(chunk_nodes):
        for o in graph.nodes[idx].outputs:
            c = req.get(o)
            if not o or o == end_tensor or not isinstance(c, Cut):
                continue
            if not (o in graph.output_names or o in kept
                    or any(x not in chunk_nodes for x in graph.consumers.get(o, []))):
                continue
            cone = _cone(graph, o, c)
            if cone is not None:
                out.update(set(cone.nodes) & chunk_nodes)
    return out


def _recompute(graph: Graph, slices: dict, outer: dict, taken: set[int], produced: set[str],
               cuts: dict, in_cuts: dict) -> set[int]:
    """Replace large sliced inputs made by cheap nodes from small tensors with body copies of
    those nodes (updating `slices`, `outer`, `cuts`, `in_cuts` in place); returns their indices."""
    new_slices, new_outer, new_cuts, new_in = dict(slices), dict(outer), {}, {}
    clones = _clone_cone(graph, new_slices, new_outer, taken, produced, new_cuts, new_in)
    if not clones or any(t in new_outer for t in new_cuts):
        return set()  # a recomputed tensor also read whole: keep it as it was
    slices.clear()
    slices.update(new_slices)
    outer.clear()
    outer.update(new_outer)
    cuts.update(new_cuts)
    in_cuts.update(new_in)
    return clones


@dataclass(frozen=True)
class _Cone:
    """Cheap nodes that rebuild a tensor chunk from much smaller tensors (see _cone)."""

    nodes: dict  # node index -> input cuts
    made: dict  # tensor -> cut, for every tensor the cone produces
    leaves: tuple  # (tensor, cut) read sliced
    whole: tuple  # tensors read whole
    inputs: frozenset  # every tensor the cone reads


def _cone(graph: Graph, t: str, c: Cut) -> _Cone | None:
    """The cone of cheap nodes that makes `t`'s chunk along `c`, grown backwards while tensors
    stay large (>= 1/CLONE_FLOOR of `t`'s elements); None unless what it reads is CLONE_GAIN times smaller than `t`.
    Depends on the graph only, so it is kept in the graph's session."""
    cache = graph.session.cones
    key = (t, c)
    if key in cache:
        return cache[key]
    floor = max(1, (graph.info(t).numel or 0) // CLONE_FLOOR)
    nodes: dict[int, list] = {}
    made: dict[str, Cut] = {}
    leaves: dict[tuple[str, Cut], None] = {}
    whole: dict[str, None] = {}
    stack = [(t, c)]
    result = None
    while stack:
        u, cu = stack.pop()
        if made.get(u, cu) != cu:
            break  # read along two cuts inside the cone
        if u in made:
            continue
        p = graph.producer.get(u)
        node_cuts = None
        if p is not None and len(nodes) < MAX_CLONES and graph.nbytes(u) >= CLONE_MIN_BYTES \
                and (graph.info(u).numel or 0) >= floor:
            n = graph.nodes[p]
            if ops.info(n).clone and len(n.outputs) == 1:
                res = trace_node(graph, n, 0, cu.axis)
                if res != MIX:
                    node_cuts = [None if r is None else Cut(r[0], cu.scale * r[1]) for r in res]
        if node_cuts is None:
            leaves[(u, cu)] = None
            continue
        nodes[p] = node_cuts
        made[u] = cu
        for i, ci in zip(graph.nodes[p].inputs, node_cuts):
            if i:
                if ci is None:
                    whole[i] = None
                else:
                    stack.append((i, ci))
    else:
        _shapes_from_chunks(graph, nodes, made, whole)
        leaves = {k: None for k in leaves if k[0] not in made}
        if nodes and not any(u in made for u in whole):
            read = sum(graph.nbytes(u) for u, _ in leaves)
            read += sum(graph.nbytes(u) for u in whole if not graph.is_weight(u) and graph.const_value(u) is None)
            if read * CLONE_GAIN <= graph.nbytes(t):
                ins = frozenset(i for p in nodes for i in graph.nodes[p].inputs if i)
                result = _Cone(nodes, made, tuple(leaves), tuple(whole), ins)
    cache[key] = result
    return result


def _shapes_from_chunks(graph: Graph, nodes: dict, made: dict, whole: dict) -> None:
    """A shape read whole by the cone (Expand's target) but taken from a tensor the cone makes
    (`Shape(t) -> Expand`, as exporters write `full_like`) is taken from t's chunk instead: else
    the original t would have to be computed whole just for its shape. (The Expand's target is
    patched to the chunk's length in the body either way.)"""
    for w in list(whole):
        p = graph.producer.get(w)
        if p is None or p in nodes:
            continue
        n = graph.nodes[p]
        if ops.info(n).shape_output and n.inputs and n.inputs[0] in made:
            nodes[p] = [None] * len(n.inputs)
            del whole[w]


def _clone_cone(graph: Graph, slices: dict, outer: dict, taken: set[int], produced: set[str],
                cuts: dict, in_cuts: dict) -> set[int]:
    """Swap each large sliced input for the cone that rebuilds it, where the region allows."""
    clones: set[int] = set()
    for t, c in list(slices):
        if graph.nbytes(t) < CLONE_MIN_BYTES or t in outer or any(t2 == t and c2 != c for t2, c2 in slices):
            continue
        cone = _cone(graph, t, c)
        if cone is None or len(clones) + len(cone.nodes) > MAX_CLONES:
            continue
        if any(p in taken or p in clones for p in cone.nodes) or not produced.isdisjoint(cone.inputs):
            continue
        if any(u != t and (u in outer or any(t2 == u for t2, _ in slices)) for u in cone.made):
            continue
        clones.update(cone.nodes)
        in_cuts.update(cone.nodes)
        cuts.update(cone.made)
        del slices[(t, c)]
        slices.update(dict.fromkeys(cone.leaves))
        outer.update(dict.fromkeys(cone.whole))
    return clones
