"""Candidate regions around the current memory peak.

The tensors live at the peak that are largest are the anchors: a useful region computes an anchor
inside the loop (its producer and all its consumers run there), so windows start at or before
the anchor's producer and end at or after its last consumer. For every end node in reach, every
dim of its output and every start in reach, the chunk flow decides what runs in the loop.
"""
from __future__ import annotations

from bisect import bisect_left
from fractions import Fraction

from . import ops
from .chunkflow import Cut, Flow, Region, _cone, trace_flow
from .peak import Estimate
from .graph import Graph
from .select import read_bytes

FORWARD = 24  # end nodes considered after the anchor's last consumer
BACKWARD = 48  # start nodes considered before the anchor's producer
ANCHORS = 3


def anchors(graph: Graph, est: Estimate, opaque: set[int], peak_node: int | None = None) -> list[str]:
    """Largest tensors live at the peak that a plain node produces; first, when the peak is a
    node's own scratch (a fused Attention's scores), that node's output."""
    out = []
    if peak_node is not None and peak_node not in opaque:
        n = graph.nodes[peak_node]
        used = [o for o in n.outputs if o and o in graph.consumers]
        if used:
            out.append(used[0])
    for lt in est.live_at_peak:
        p = graph.producer.get(lt.name)
        if p is None or p in opaque or lt.bytes <= 0 or lt.name in out:
            continue
        out.append(lt.name)
        if len(out) == ANCHORS:
            break
    return out


def search_anchors(graph: Graph, est: Estimate, opaque: set[int], peak_node: int | None = None) -> list[str]:
    """The anchors a stage's search starts from (recomputable ones redirected to their readers)."""
    return _redirect(graph, anchors(graph, est, opaque, peak_node), opaque)


def spans(graph: Graph, found: list[str], opaque: set[int]) -> list[tuple[str, int, int, int]]:
    """(anchor, its producer, earliest start, its last consumer) of each anchor searched around."""
    out = []
    for anchor in found:
        if anchor in graph.output_names:
            continue
        a = graph.producer[anchor]
        lo = a
        while lo > 0 and a - lo < BACKWARD and lo - 1 not in opaque:
            lo -= 1
        out.append((anchor, a, lo, max(graph.consumers.get(anchor, [a]))))
    return out


class SearchCache:
    """Flows and regions traced at earlier stages of one plan, kept while what they read stays as
    it was: the next stage's search covers most of the layers the last one did.

    A flow's modes depend on the opaque nodes of its window only, and serve any later start
    (a node's mode depends on its consumers, all after it); a region also on which of its outputs
    earlier loops keep and on the opaque nodes of the cones it looked up. `update` drops what the
    opaque nodes and kept tensors that changed since the last search may alter."""

    def __init__(self) -> None:
        self.flows: dict = {}  # (end, axis) -> (start, modes, input cuts, requirements)
        self.regions: dict = {}  # (end, axis, start) -> (region or None, cone keys, cone nodes)
        self.body_fns: dict = {}  # Region -> its body peak function (select.QuickCost)
        self.opaque: frozenset[int] = frozenset()
        self.kept: frozenset[str] = frozenset()

    def update(self, graph: Graph, opaque: set[int], kept: frozenset[str]) -> None:
        changed = sorted(self.opaque.symmetric_difference(opaque))
        made = sorted({graph.producer[t] for t in self.kept.symmetric_difference(kept) if t in graph.producer})
        self.opaque, self.kept = frozenset(opaque), kept
        if not changed and not made:
            return

        def hits(xs: list[int], lo: int, hi: int) -> bool:
            k = bisect_left(xs, lo)
            return k < len(xs) and xs[k] <= hi

        moved = set(changed)
        self.flows = {k: v for k, v in self.flows.items() if not hits(changed, v[0], k[0])}
        self.regions = {k: v for k, v in self.regions.items()
                        if not hits(changed, k[2], k[0]) and not hits(made, k[2], k[0]) and not (v[2] & moved)}


def _flow(graph: Graph, order: list[int], e: int, end: str, axis: int, start: int, opaque, kept,
          cache: SearchCache | None) -> Flow:
    hit = cache.flows.get((e, axis)) if cache is not None else None
    if hit is not None and hit[0] <= start:
        return Flow(graph, order, e, end, hit[1], hit[2], hit[3], opaque, kept)
    f = trace_flow(graph, order, e, end, axis, start, opaque, kept)
    if cache is not None:
        cache.flows[(e, axis)] = (start, f.mode, f.in_cuts, f.req)
    return f


def _region(graph: Graph, flow: Flow, e: int, axis: int, s: int, cache: SearchCache | None) -> Region | None:
    cones = graph.session.cones
    hit = cache.regions.get((e, axis, s)) if cache is not None else None
    if hit is not None:
        if cones.reads is not None:
            cones.reads.update(hit[1])  # what building it looked up (reuse.py compares it)
        return hit[0]
    outer = cones.reads
    mine = cones.reads = set()
    try:
        r = flow.region(s)
    finally:
        cones.reads = outer
    if outer is not None:
        outer.update(mine)
    if cache is not None:
        nodes = frozenset(p for k in mine if dict.get(cones, k) is not None for p in cones[k].nodes)
        cache.regions[(e, axis, s)] = (r, frozenset(mine), nodes)
    return r


def candidates(graph: Graph, est: Estimate, opaque: set[int], peak_node: int | None = None,
               kept: frozenset[str] = frozenset(), found_anchors: list[str] | None = None,
               need: dict[int, int] | None = None, cache: SearchCache | None = None) -> list[Region]:
    """All distinct legal regions that would make one of the anchors loop-internal.

    Flows are traced once per (end, axis) from the earliest start an anchor needs there, and each
    region once per (end, axis, start): anchors of one layer share most of their windows.
    `found_anchors`: `search_anchors` when the caller has them; `need` (when given) receives, per
    end node, the start its flows were traced from. `cache`: flows and regions of earlier stages
    (`SearchCache`, updated by the caller for this stage's opaque nodes and kept tensors)."""
    order = list(range(len(graph.nodes)))
    seen: set = set()
    found: list[Region] = []
    if found_anchors is None:
        found_anchors = search_anchors(graph, est, opaque, peak_node)
    spans_ = spans(graph, found_anchors, opaque)
    if not spans_:
        return found
    need = {} if need is None else need  # end -> earliest start any anchor needs with it
    for _, _, lo, last in spans_:
        for e in range(last, min(len(order), last + FORWARD + 1)):
            need[e] = min(need.get(e, lo), lo)
    flows: dict[tuple[int, int], object] = {}
    regions: dict[tuple[int, int, int], Region | None] = {}
    for anchor, a, lo, last in spans_:
        views = _views(graph, anchor)
        for e in range(last, min(len(order), last + FORWARD + 1)):
            if e in opaque:
                continue
            n = graph.nodes[e]
            used = [o for o in n.outputs if o and (o in graph.consumers or o in graph.output_names)]
            if len(used) != 1:
                continue
            shape = graph.shape(used[0])
            if not shape:
                continue
            for axis, dim in enumerate(shape):
                if dim < 2:
                    continue
                if (e, axis) not in flows:
                    flows[(e, axis)] = _flow(graph, order, e, used[0], axis, need[e], opaque, kept, cache)
                flow = flows[(e, axis)]
                if not flow.chunked(a):
                    continue
                prev_body = None
                least_read = None  # activation bytes the loop reads, of the last region kept
                for s in range(a, lo - 1, -1):
                    if s != a and not flow.chunked(s):
                        continue  # the loop body only changes where a chunked node joins
                    if (e, axis, s) not in regions:
                        regions[(e, axis, s)] = _region(graph, flow, e, axis, s, cache)
                    r = regions[(e, axis, s)]
                    if r is None:
                        continue
                    key = (frozenset(r.nodes), tuple(r.outputs), axis)
                    body = key[0]
                    if body == prev_body:
                        continue
                    prev_body = body
                    produced = {o for b in r.owned for o in b.outputs}
                    if not views <= produced or views & set(r.outputs):
                        continue  # the anchor's buffer (or a view of it) would still be materialised
                    read = read_bytes(graph, r)
                    if least_read is not None and read >= least_read:
                        continue  # a longer loop that materialises nothing less: dominated
                    least_read = read
                    if key not in seen:
                        seen.add(key)
                        found.append(r)
    return found


def _views(graph: Graph, t: str) -> set[str]:
    """`t` and every tensor sharing its buffer through view ops (Reshape, Unsqueeze, ...)."""
    out, stack = {t}, [t]
    while stack:
        for c in graph.consumers.get(stack.pop(), []):
            n = graph.nodes[c]
            if ops.info(n).alias and n.outputs and n.outputs[0] and n.outputs[0] not in out:
                out.add(n.outputs[0])
                stack.append(n.outputs[0])
    return out


def recomputable(graph: Graph, t: str) -> bool:
    """Whether a loop reading `t` along some axis could rebuild its chunks from much smaller
    tensors (a mask or position bias built in the graph): then `t` need never exist whole."""
    shape = graph.shape(t)
    if not shape or graph.producer.get(t) is None:
        return False
    return any(d >= 2 and _cone(graph, t, Cut(ax, Fraction(1))) is not None for ax, d in enumerate(shape))


def _redirect(graph: Graph, found: list[str], opaque: set[int]) -> list[str]:
    """Anchors, with each recomputable one replaced by its readers' outputs.

    A bias [1, H, L, L] computed once and added in every layer holds the peak where it is made;
    chunking its own computation only moves it (the whole result is still read by every layer).
    The loops that help are its readers', each rebuilding its chunk of the bias: once all of them
    do, the original dies. So the search anchors there. Readers: the first consumers, forward
    through the cheap chain, whose output is not recomputable itself."""
    out: list[str] = []
    for t in found:
        if not recomputable(graph, t):
            out.append(t)
            continue
        seen, stack, readers = {t}, [t], []
        while stack and len(seen) < 64:
            for c in graph.consumers.get(stack.pop(), []):
                n = graph.nodes[c]
                o = n.outputs[0] if n.outputs else ""
                if not o or o in seen or c in opaque:
                    continue
                seen.add(o)
                if recomputable(graph, o):
                    stack.append(o)
                else:
                    readers.append(o)
        out += [r for r in sorted(readers, key=lambda r: graph.producer[r]) if r not in out]
    return out[:2 * ANCHORS]
