"""Execution order and memory estimate of a graph with some regions turned into chunk loops.

A planned loop stands in the order as one step, placed by a stable topological sort keyed on the
original node order; its transient memory is the body's peak at its chunk size.
"""
from __future__ import annotations

from . import kernels, notes, ops
from .chunkflow import Region
from .peak import Estimate, Step, estimate_steps, fusions, liveness, node_step
from .graph import Graph, itemsize
from .graphutil import stable_toposort
from .kernels import einsum_scratch
from .plan import Loop
from .uniform import uniform_nodes


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
    uniform = uniform_nodes(graph, region)  # built as one number in the body (uniform.py)
    for n in region.body:
        st = node_step(graph, n, fused)
        if ops.info(n).scratch is kernels.einsum_node_scratch:
            st.extra_bytes = _einsum_chunk_scratch(graph, region, n, chunk, st.extra_bytes, frac)
        elif ops.info(n).scratch is kernels.conv_scratch:
            st.extra_bytes -= kernels.conv_scratch(graph, n)  # in a Loop body: plain Conv, no NCHWc buffers
        elif n.index not in region.value_nodes:
            st.extra_bytes = int(st.extra_bytes * frac)  # kernel scratch scales with the chunk
        if ops.info(n).loop_extra is not None and n.index not in region.value_nodes:
            st.extra_bytes += ops.info(n).loop_extra(graph, n)  # what its chunked form adds (ops.py)
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
                sizes[o] = graph.nbytes(o) // max(1, graph.info(o).numel or 1) if n.index in uniform \
                    else int(graph.nbytes(o) * frac) if o in region.cuts else graph.nbytes(o)
    steps = _body_ort_order(steps, region.outputs)
    # each chunk of a loop output is copied into the sequence: keep it to the end of the body
    timeline = liveness(steps, sizes, inputs=[], outputs=list(region.outputs), external=lambda t: t not in sizes).timeline
    return timeline or [0]


def _body_ort_order(steps: list[Step], outputs: list[str]) -> list[Step]:
    """The body's steps in the order ORT runs the emitted Loop body (ort_order's reverse DFS; the
    slices come first and each output's SequenceInsert last, as the rewrite emits them): a bias
    rebuilt per chunk is computed after the scores it is added to, not before them (T5 sdpa: 170.6
    -> 221.8 MiB at chunk 820 of 4096, as measured)."""
    from .ort_order import reverse_dfs

    made = {o: k for k, st in enumerate(steps) for o in st.outputs}
    producers = [{made[t] for t in st.inputs if made.get(t, k) != k} for k, st in enumerate(steps)]
    producers += [{made[o]} for o in outputs if o in made]  # the SequenceInserts of the epilogue
    order = reverse_dfs(list(range(len(producers))), producers)
    return [steps[k] for k in order if k < len(steps)]


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
    except (ValueError, KeyError, IndexError, AttributeError) as e:
        notes.note(f"Einsum scratch of node {n.name} in a loop not modelled ({type(e).__name__}): scaled from the whole")
        return int(whole * frac)


def loop_step(graph: Graph, loop: Loop, fused=None) -> Step:
    """A loop as one step of the plan: it reads its inputs, writes its outputs, and holds the
    body's peak at its chunk size (or its joined outputs, if larger) while it runs."""
    r = loop.region
    out_total = sum(graph.nbytes(t) for t in r.outputs)
    return Step(f"Loop[{r.end}]", "Loop", r.inputs, list(r.outputs),
                extra_bytes=max(body_peak(graph, r, loop.chunk, fused), out_total))


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


class Readers:
    """Who still reads what in a plan: reader counts with its loops in place, and the nodes no
    step reads any more (every reader recomputes them inside a loop)."""

    def __init__(self, graph: Graph, regions: list[Region]):
        self.graph, self.regions = graph, list(regions)
        self.counts = reader_counts(graph, self.regions)
        self.dead = dead_nodes(graph, self.regions, self.counts)
        self.newly_dead = False  # whether some dead_with answer was not empty (reuse reads it)

    def dead_with(self, r: Region) -> set[int]:
        """Nodes that die only once region `r` joins the plan (it recomputes their last reader)."""
        counts = dict(self.counts)
        move_reads(self.graph, r, counts)
        out = dead_nodes(self.graph, self.regions + [r], counts) - self.dead
        self.newly_dead |= bool(out)
        return out


def schedule(graph: Graph, loops: list[Loop]) -> list[int | Loop]:
    """Stable topological order of plain nodes and loops (a loop keyed on its last node; nodes
    left dead dropped)."""
    regions = [lp.region for lp in loops]
    owned = {n.index for r in regions for n in r.owned}
    dead = dead_nodes(graph, regions) if any(r.clones for r in regions) else set()
    items: list[int | Loop] = [n.index for n in graph.nodes if n.index not in owned and n.index not in dead]
    items += list(loops)
    keys = [it.region.end_index if isinstance(it, Loop) else it for it in items]
    node_reads = graph.session.node_reads
    if node_reads is None:
        node_reads = graph.session.node_reads = [graph.reads(n.index) for n in graph.nodes]
    reads = [it.region.inputs if isinstance(it, Loop) else node_reads[it] for it in items]
    writes = [it.region.outputs if isinstance(it, Loop) else graph.nodes[it].outputs for it in items]
    fast = _sorted_if_topological(keys, reads, writes)
    if fast is not None:
        return [items[k] for k in fast]
    try:
        return [items[k] for k in stable_toposort(keys, reads, writes)]
    except ValueError:
        raise ValueError("chunk plan creates a cycle") from None


def _sorted_if_topological(keys: list, reads: list, writes: list) -> list[int] | None:
    """The items sorted by key (ties by position) when that order is topological, else None.

    `stable_toposort` pops the smallest ready key first, so it returns the lexicographically
    smallest topological order; when plain key order is topological it is that order. Checking
    it is one pass, where the sort with its heap is several (most plans keep graph order)."""
    perm = sorted(range(len(keys)), key=keys.__getitem__)
    produced: dict[str, int] = {}
    for k, outs in enumerate(writes):
        for o in outs:
            if o:
                produced[o] = k
    done = [False] * len(keys)
    for k in perm:
        for i in reads[k]:
            p = produced.get(i)
            if p is not None and p != k and not done[p]:
                return None
        done[k] = True
    return perm


def plan_steps(graph: Graph, loops: list[Loop], fused=None) -> tuple[list[Step], list[int | Loop]]:
    """The plan's steps in its order. Each node's and each loop's step is built once per graph and
    shared by later calls (estimate_steps only reads them)."""
    fused = fusions(graph) if fused is None else fused
    order = schedule(graph, loops)
    cache = graph.session.plan_steps if fused is fusions(graph) else {}
    steps = []
    for it in order:
        key = (it.region, it.chunk) if isinstance(it, Loop) else it
        st = cache.get(key)
        if st is None:
            st = cache[key] = loop_step(graph, it, fused) if isinstance(it, Loop) else node_step(graph, graph.nodes[it], fused)
        steps.append(st)
    return steps, order


def estimate_plan(graph: Graph, loops: list[Loop], fused=None) -> tuple[Estimate, list[int | Loop]]:
    """The estimate of the graph with `loops` in place, and the order it was made over."""
    steps, order = plan_steps(graph, loops, fused)
    return estimate_steps(graph, steps), order
