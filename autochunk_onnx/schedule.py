"""Execution order and memory estimate of a graph with some regions turned into chunk loops.

A planned region stands in the order as one step (the Loop), placed by a stable topological sort
keyed on the original node order; its transient memory is the body's peak at its chunk size.
"""
from __future__ import annotations

import heapq

from . import kernels, ops
from .chunkflow import Region
from .peak import Estimate, Step, estimate_steps, fusions, liveness, node_step
from .kernels import einsum_scratch
from .graph import Graph, itemsize


def body_peak(graph: Graph, region: Region, chunk: int, fused: dict[int, int] | None = None) -> int:
    """Peak bytes inside one iteration: slices of inputs plus the body's live chunk tensors."""
    return int(max(_body_timeline(graph, region, chunk, fused)))


def body_peak_fn(graph: Graph, region: Region, fused: dict[int, int] | None = None):
    """chunk -> body peak, from two walks: each step's bytes are affine in the chunk size."""
    c1, c2 = region.units, max(1, region.units // 2)
    t1 = _body_timeline(graph, region, c1, fused)
    t2 = _body_timeline(graph, region, c2, fused)
    if c1 == c2:
        return lambda c: int(max(t1))
    lines = [((a - b) / (c1 - c2), a) for a, b in zip(t1, t2)]
    return lambda c: int(max(a + slope * (c - c1) for slope, a in lines))


def _body_timeline(graph: Graph, region: Region, chunk: int, fused: dict[int, int] | None) -> list[int]:
    frac = chunk / region.units
    sizes: dict[str, int] = {}
    slice_names = {}
    steps = []
    for t, c in region.slices:
        name = f"{t}@slice{c.axis}"
        slice_names[(t, c)] = name
        sizes[name] = int(graph.nbytes(t) * frac)
        steps.append(Step(name, "Slice", [], [name]))
    for n in region.body:
        st = node_step(graph, n, fused)
        if ops.info(n).scratch is kernels.einsum_node_scratch:
            st.extra_bytes = _einsum_chunk_scratch(graph, region, n, chunk, st.extra_bytes, frac)
        elif n.index not in region.value_nodes:
            st.extra_bytes = int(st.extra_bytes * frac)  # kernel scratch scales with the chunk
        ins = []
        cuts = region.in_cuts.get(n.index)
        for k, i in enumerate(n.inputs):
            if not i:
                continue
            c = cuts[k] if cuts else None
            ins.append(slice_names.get((i, c), i) if c is not None and i not in region.cuts else i)
        st.inputs = ins
        steps.append(st)
        for o in n.outputs:
            if o:
                sizes[o] = int(graph.nbytes(o) * frac) if o in region.cuts else graph.nbytes(o)
    # each chunk of a loop output is copied into the sequence: keep it to the end of the body
    _, _, _, timeline, _ = liveness(steps, sizes, inputs=[], outputs=list(region.outputs),
                                    external=lambda t: t not in sizes)
    return timeline or [0]


def _einsum_chunk_scratch(graph: Graph, region: Region, n, chunk: int, whole: int, frac: float) -> int:
    """Einsum scratch at the chunk's shapes: the transposed copy of an operand read whole does not
    shrink with the chunk (a triangle update re-permutes its full right operand every iteration)."""
    cuts = region.in_cuts.get(n.index) or [None] * len(n.inputs)
    shapes = []
    for i, c in zip(n.inputs, cuts):
        shape = list(graph.shape(i) or ())
        if c is not None and shape:
            shape[c.axis] = max(1, min(shape[c.axis], chunk * int(c.scale)))
        shapes.append(shape)
    info = graph.info(n.outputs[0])
    try:
        return einsum_scratch(n.attr("equation", ""), shapes, itemsize(info.elem_type))
    except (ValueError, KeyError, IndexError, AttributeError):
        return int(whole * frac)


def region_step(graph: Graph, region: Region, fused=None) -> Step:
    out_total = sum(graph.nbytes(t) for t in region.outputs)
    return Step(f"Loop[{region.end}]", "Loop", region.inputs, list(region.outputs),
                extra_bytes=max(body_peak(graph, region, region.chunk, fused), out_total))


def reader_counts(graph: Graph, regions: list[Region]) -> dict[str, int]:
    """How many steps of the plan read each tensor (plain nodes, loops, graph outputs)."""
    counts = dict(graph.read_count)
    for r in regions:
        move_reads(graph, r, counts)
    return counts


def move_reads(graph: Graph, r: Region, counts: dict[str, int]) -> None:
    for n in r.owned:
        for i in graph.reads(n.index):
            counts[i] -= 1
    for i in r.inputs:
        counts[i] = counts.get(i, 0) + 1


def dead_nodes(graph: Graph, regions: list[Region], counts: dict[str, int] | None = None) -> set[int]:
    """Nodes no step reads any more because every reader recomputes them inside a loop.

    Only nodes whose output somebody read in the original graph can die (a model's own dead
    nodes are left as they are)."""
    counts = reader_counts(graph, regions) if counts is None else counts
    owned = {n.index for r in regions for n in r.owned}
    work = sorted({i for r in regions for i in r.clones}, reverse=True)
    dead: set[int] = set()
    counts = dict(counts)
    while work:
        p = work.pop()
        if p in dead or p in owned:
            continue
        outs = [o for o in graph.nodes[p].outputs if o]
        if not any(graph.read_count.get(o) for o in outs) or any(counts.get(o) for o in outs):
            continue
        dead.add(p)
        for i in graph.reads(p):
            counts[i] -= 1
            if counts[i] == 0 and i in graph.producer:
                work.append(graph.producer[i])
    return dead


def schedule(graph: Graph, regions: list[Region]) -> list[int | Region]:
    """Stable topological order of plain nodes and region loops (nodes left dead dropped)."""
    owner: dict[int, Region] = {}
    for r in regions:
        for n in r.owned:
            owner[n.index] = r
    dead = dead_nodes(graph, regions) if any(r.clones for r in regions) else set()
    items: list[int | Region] = [n.index for n in graph.nodes if n.index not in owner and n.index not in dead]
    items += list(regions)
    key = {id(it): (it.end_index if isinstance(it, Region) else it) for it in items}
    outs = {}
    for it in items:
        for o in (it.outputs if isinstance(it, Region) else graph.nodes[it].outputs):
            if o:
                outs[o] = it
    deps: dict[int, set] = {id(it): set() for it in items}
    users: dict[int, list] = {id(it): [] for it in items}
    for it in items:
        ins = it.inputs if isinstance(it, Region) else graph.reads(it)
        for i in ins:
            p = outs.get(i)
            if p is not None and p is not it and id(p) not in deps[id(it)]:
                deps[id(it)].add(id(p))
                users[id(p)].append(it)
    ready = [(key[id(it)], n, it) for n, it in enumerate(items) if not deps[id(it)]]
    heapq.heapify(ready)
    order = []
    tie = len(items)
    while ready:
        _, _, it = heapq.heappop(ready)
        order.append(it)
        for u in users[id(it)]:
            d = deps[id(u)]
            d.discard(id(it))
            if not d:
                tie += 1
                heapq.heappush(ready, (key[id(u)], tie, u))
    if len(order) != len(items):
        raise ValueError("chunk plan creates a cycle")
    return order


def plan_steps(graph: Graph, regions: list[Region], fused=None) -> tuple[list[Step], list[int | Region]]:
    fused = fusions(graph) if fused is None else fused
    order = schedule(graph, regions)
    steps = [region_step(graph, it, fused) if isinstance(it, Region) else node_step(graph, graph.nodes[it], fused) for it in order]
    return steps, order


def estimate_plan(graph: Graph, regions: list[Region], fused=None) -> tuple[Estimate, list[int | Region]]:
    steps, order = plan_steps(graph, regions, fused)
    return estimate_steps(graph, steps), order
