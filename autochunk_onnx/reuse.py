"""Structural reuse across planning stages: a stage whose search would read what an earlier stage's
search read, translated to another layer of a stack of identical layers, takes that stage's
ranked candidates instead of searching again.

A stage's search (`search.candidates`, then `select.choose`) reads: its anchors; the window of
nodes it traces (the core: from the earliest start it walks back to, to FORWARD nodes past the
anchors' last consumers); the producers of what the core reads (the boundary); the recompute
cones it looks up; which nodes are opaque and which tensors earlier loops keep; and, to cost each
candidate, the plan's estimate over the core's positions, the plan's peak, and the reader counts
that decide which recomputed nodes die. A `Template` records all of that at a stage that searched.
A later stage uses it only when every one of those reads gives the same answer translated by a
node offset d: node i -> i + d; a tensor made by a translated node -> the same output of the
translated node; a weight -> a weight of the same shape, type and (integers) value; any
other tensor (a graph input, a mask shared by every layer) unchanged. The candidates the stage
tries are then traced and costed again where they are and must equal the translated template's.
So a stage that reuses a template decides what its own search would have decided, at the cost of
the checks; when anything differs it searches.
"""
from __future__ import annotations

from dataclasses import dataclass

from .chunkflow import Region, _cone, trace_flow
from .graph import Graph
from .peak import Estimate, node_step
from .plan import Loop, portable
from .schedule import body_peak_fn
from .search import FORWARD, _views, spans
from .select import Choice, QuickCost, choose

MAX_TEMPLATES = 8  # the most recent templates a stage is checked against


@dataclass
class Template:
    """What one stage's search read, and the choices it ranked first."""

    anchors: list[str]
    views: list[frozenset[str]]
    lo: int  # core: node indices lo..hi
    hi: int
    p_lo: int  # the core's plain nodes sit at positions p_lo..p_lo + len(order) - 1 of the plan's order
    order: list  # the order's items there (node indices; Loop items as they were)
    after: list[int]  # live bytes after the step before p_lo (the inputs' bytes at 0), then at each position
    timeline: list[int]
    peak_bytes: int
    peak_index: int
    input_bytes: int
    opaque: frozenset[int]
    kept: frozenset[str]
    cones: dict  # (tensor, cut) -> cone or None: every cone the search looked up
    roots: frozenset[int]  # nodes the candidates recompute
    choices: list[tuple[Choice, int, object]]  # the first choices, the start their flow was traced from, body peak fn
    loop: int  # the index the loop this stage adds gets in the plan


class Memo:
    """Templates of the stages of one planning run, and the checks that reuse them."""

    def __init__(self, graph: Graph, fused, portable_only: bool, tries: int):
        self.graph, self.fused, self.portable_only, self.tries = graph, fused, portable_only, tries
        self.templates: list[Template] = []
        self._sigs: dict = {}
        self.outputs = set(graph.output_names)
        self._reads: set | None = None

    # --- recording ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start collecting the cones the coming search looks up."""
        self.graph.session.cones.reads = set()

    def stop(self) -> None:
        """Stop collecting (the reads stay for `record`)."""
        self._reads, self.graph.session.cones.reads = self.graph.session.cones.reads, None

    def record(self, est: Estimate, order: list, quick: QuickCost, readers, loops: list[Loop], opaque: set[int],
               kept: frozenset[str], found: list[str], cands: list[Region], ranked: list[Choice],
               need: dict[int, int], loop: int) -> None:
        """Keep what this stage's search read, when a later stage can be checked against it."""
        g = self.graph
        reads, self._reads = self._reads or set(), None
        sp = spans(g, found, opaque)
        if not sp or not ranked or readers.newly_dead:
            return
        lo = min(s[2] for s in sp) - 1
        hi = max(s[3] for s in sp) + FORWARD
        if lo < 0 or hi >= len(g.nodes):
            return  # the search was clipped by the graph's ends: another layer's would not be
        pos = [quick.pos[i] for i in range(lo, hi + 1) if i in quick.pos]
        if not pos:
            return
        p_lo, p_hi = min(pos), max(pos)
        roots = frozenset(c for r in cands for c in r.clones)
        self.templates.append(Template(
            anchors=list(found), views=[frozenset(_views(g, a)) for a in found], lo=lo, hi=hi, p_lo=p_lo,
            order=list(order[p_lo:p_hi + 1]),
            after=[est.after[p_lo - 1] if p_lo > 0 else est.input_bytes] + est.after[p_lo:p_hi + 1],
            timeline=[t.live_bytes for t in est.timeline[p_lo:p_hi + 1]],
            peak_bytes=est.peak_bytes, peak_index=est.peak_index, input_bytes=est.input_bytes,
            opaque=frozenset(opaque), kept=kept, cones={k: g.session.cones[k] for k in reads if k in g.session.cones},
            roots=roots,
            choices=[(ch, need[ch.region.end_index], body_peak_fn(g, ch.region, self.fused))
                     for ch in ranked[:self.tries]], loop=loop))

    def _none_die(self, roots, m: "_Match", loops: list[Loop], readers) -> bool:
        """Whether no candidate's loop can make a recomputed node die here: each is dead or owned
        already, or keeps a reader outside the core whatever the loop reads (so `freed` is 0
        here, as it was for every candidate where the template was recorded)."""
        g = self.graph
        lo, hi = m.t.lo + m.d, m.t.hi + m.d
        owned = {n.index for lp in loops for n in lp.region.owned}
        for p in {m.mu(c) for c in roots} | {c for lp in loops for c in lp.region.clones}:
            if p in readers.dead or p in owned:
                continue
            outs = [o for o in g.nodes[p].outputs if o]
            if not any(g.read_count.get(o) for o in outs):
                continue
            if not any(readers.counts.get(o, 0) - sum(lo <= c <= hi for c in g.consumers.get(o, [])) > 0 for o in outs):
                return False
        return True

    # --- reuse --------------------------------------------------------------------------------
    def lookup(self, est: Estimate, order: list, quick: QuickCost, readers, loops: list[Loop], opaque: set[int],
               kept: frozenset[str], found: list[str], budget: int, model_s: float) -> tuple[list[Choice], int] | None:
        """The choices this stage's search would rank first, from a template whose reads all match
        translated; None when none does."""
        g = self.graph
        if not found or found[0] not in g.producer:
            return None
        for k in range(len(self.templates) - 1, max(-1, len(self.templates) - 1 - MAX_TEMPLATES), -1):
            t = self.templates[k]
            if len(t.anchors) != len(found) or t.anchors[0] not in g.producer:
                continue
            d = g.producer[found[0]] - g.producer[t.anchors[0]]
            m = _Match(self, t, d, opaque, kept)
            if not m.structure() or [m.psi(a) for a in t.anchors] != found:
                continue
            if [frozenset(m.psi(x) for x in v) for v in t.views] != [frozenset(_views(g, a)) for a in found]:
                continue
            if not m.cones() or not self._numbers(t, m, est, order, quick):
                continue
            if not self._none_die(t.roots, m, loops, readers):
                continue
            chosen = self._choices(t, m, quick, opaque, kept, budget, model_s)
            if chosen is not None:
                return chosen, t.loop
        return None

    def _numbers(self, t: Template, m: "_Match", est: Estimate, order: list, quick: QuickCost) -> bool:
        """The estimate over the core's positions, the peak and the order there, as the template's."""
        q_lo = quick.pos.get(t.order[0] + m.d) if isinstance(t.order[0], int) else None
        if q_lo is None or q_lo + len(t.order) > len(order):
            return False
        shift = q_lo - t.p_lo
        if est.peak_bytes != t.peak_bytes or est.peak_index - shift != t.peak_index or est.input_bytes != t.input_bytes:
            return False
        for it, jt in zip(t.order, order[q_lo:q_lo + len(t.order)]):
            if isinstance(it, int):
                if not isinstance(jt, int) or jt != it + m.d:
                    return False
            elif not isinstance(jt, Loop):
                return False
        after = [est.after[q_lo - 1] if q_lo > 0 else est.input_bytes] + est.after[q_lo:q_lo + len(t.order)]
        return after == t.after and [p.live_bytes for p in est.timeline[q_lo:q_lo + len(t.order)]] == t.timeline

    def _choices(self, t: Template, m: "_Match", quick: QuickCost, opaque: set[int], kept: frozenset[str],
                 budget: int, model_s: float) -> list[Choice] | None:
        """The template's first choices traced and costed again here; None unless each equals the
        template's translated."""
        g = self.graph
        order = list(range(len(g.nodes)))
        out = []
        for ch, need, bp in t.choices:
            r = ch.region
            flow = trace_flow(g, order, r.end_index + m.d, m.psi(r.end), r.cuts[r.end].axis, need + m.d, opaque, kept)
            r2 = flow.region(r.start_index + m.d)
            if r2 is None or _region_key(r, m.mu, m.psi) != _region_key(r2, _same, _same):
                return None
            if self.portable_only and not portable(g, r2, g.session.dynamic or {}):
                return None
            quick.body_fns[r2] = bp  # the same nodes, steps and shapes: the same body peaks
            ch2 = choose(g, [r2], quick, budget, model_s)[0]
            if (ch2.chunk, ch2.predicted_peak, ch2.replaced_peak, ch2.slowdown, ch2.fits, ch2.covers) != \
                    (ch.chunk, ch.predicted_peak, ch.replaced_peak, ch.slowdown, ch.fits, ch.covers):
                return None
            out.append(ch2)
        return out

    # --- what the search reads of one node or weight ------------------------------------------
    def sig(self, i: int):
        s = self._sigs.get(i)
        if s is None:
            g = self.graph
            n = g.nodes[i]
            st = node_step(g, n, self.fused)
            keys = None if st.keys is None else tuple(None if k is None else (k[0] is None, k[1]) for k in st.keys)
            dyn = g.session.dynamic or {}
            outs = tuple((_tinfo(g, o), dyn.get(o)) if o else None for o in n.outputs)
            attrs = tuple((a.name, a.SerializeToString()) for a in n.proto.attribute)
            s = self._sigs[i] = (n.domain, n.op_type, len(n.inputs), attrs, outs, st.op_type, st.extra_bytes,
                                 st.alias, st.inplace, st.src, keys, len(st.inputs), len(st.outputs))
        return s

    def wsig(self, name: str):
        key = ("w", name)
        s = self._sigs.get(key)
        if s is None:
            g = self.graph
            v = g.const_value(name)
            if v is not None:
                # integers drive dim rules (Slice bounds, axes, Reshape targets); no rule reads a
                # float's value (per-layer biases and norms differ and must not block reuse)
                v = (str(v.dtype), v.shape, v.tobytes()) if v.dtype.kind in "iub" else (str(v.dtype), v.shape)
            s = self._sigs[key] = (_tinfo(g, name), (g.session.dynamic or {}).get(name), v)
        return s


class _Match:
    """The translation by `d` of one template's reads to the current stage, checked piece by piece."""

    def __init__(self, memo: Memo, t: Template, d: int, opaque: set[int], kept: frozenset[str]):
        self.memo, self.t, self.d, self.opaque, self.kept = memo, t, d, opaque, kept
        self.g = memo.graph
        self.boundary: set[int] = set()
        self.weights: dict[str, str] = {}  # template weight -> this stage's (one to one)
        self._back: dict[str, str] = {}

    def _no(self, where: int, env: dict) -> bool:
        self.why = (where, env.get("i"), env.get("a"), env.get("b"), env.get("p"))
        return False

    def mu(self, i: int) -> int:
        return i + self.d if self.t.lo <= i <= self.t.hi or i in self.boundary else i

    def psi(self, name: str) -> str:
        g = self.g
        p = g.producer.get(name)
        if p is not None and (self.t.lo <= p <= self.t.hi or p in self.boundary):
            return g.nodes[p + self.d].outputs[g.nodes[p].outputs.index(name)]
        return self.weights.get(name, name)

    def structure(self) -> bool:
        """Every core node and the producers of what it reads, as the template's translated."""
        g, t, d, memo = self.g, self.t, self.d, self.memo
        if t.lo + d < 0 or t.hi + d >= len(g.nodes):
            return self._no(1, locals())
        shared = []
        for i in range(t.lo, t.hi + 1):
            j = i + d
            if memo.sig(i) != memo.sig(j) or (i in t.opaque) != (j in self.opaque):
                return self._no(2, locals())
            n, m = g.nodes[i], g.nodes[j]
            for a, b in zip(n.inputs, m.inputs):
                if not a or not b:
                    if bool(a) != bool(b):
                        return self._no(3, locals())
                    continue
                p = g.producer.get(a)
                if a == b:
                    if p is not None and t.lo <= p <= t.hi and d:
                        return self._no(4, locals())
                    shared.append(a)
                    continue
                if p is None:
                    if a in g.initializers and b in g.initializers and memo.wsig(a) == memo.wsig(b) \
                            and self.weights.setdefault(a, b) == b and self._back.setdefault(b, a) == a:
                        continue
                    return self._no(5, locals())
                q = g.producer.get(b)
                if q != p + d or g.nodes[p].outputs.index(a) != g.nodes[q].outputs.index(b):
                    return self._no(6, locals())
                if not t.lo <= p <= t.hi:
                    self.boundary.add(p)
            for a, b in zip(n.outputs, m.outputs):
                if bool(a) != bool(b):
                    return self._no(7, locals())
                if not a:
                    continue
                if (a in t.kept) != (b in self.kept) or (a in memo.outputs) != (b in memo.outputs):
                    return self._no(8, locals())
                ca, cb = g.consumers.get(a, []), g.consumers.get(b, [])
                ia = sorted(c + d for c in ca if t.lo <= c <= t.hi)
                ib = sorted(c for c in cb if t.lo + d <= c <= t.hi + d)
                if ia != ib or (len(ia) < len(ca)) != (len(ib) < len(cb)):
                    return self._no(9, locals())
        for p in self.boundary:
            if memo.sig(p) != memo.sig(p + d) or (p in t.opaque) != (p + d in self.opaque):
                return self._no(10, locals())
        return not any(g.producer.get(a) in self.boundary for a in shared)

    def cones(self) -> bool:
        """Every cone the template's search looked up, looked up here, is the template's translated."""
        for (name, cut), cone in self.t.cones.items():
            here = _cone(self.g, self.psi(name), cut)
            if (cone is None) != (here is None):
                return False
            if cone is None:
                continue
            mu, psi = self.mu, self.psi
            if {mu(p): c for p, c in cone.nodes.items()} != here.nodes or \
                    {psi(u): c for u, c in cone.made.items()} != here.made or \
                    tuple((psi(u), c) for u, c in cone.leaves) != here.leaves or \
                    tuple(psi(u) for u in cone.whole) != here.whole or \
                    frozenset(psi(u) for u in cone.inputs) != here.inputs:
                return False
            if any((p in self.t.opaque) != (mu(p) in self.opaque) for p in cone.nodes):
                return False
        return True


def _same(x):
    return x


def _tinfo(g: Graph, name: str):
    ti = g.info(name)
    return None if ti is None else (ti.shape, ti.elem_type)


def _region_key(r: Region, mu, psi) -> tuple:
    """A region as node indices and tensor names mapped by (mu, psi): equal keys, the same loop."""
    return (psi(r.end), tuple(mu(n.index) for n in r.body), tuple(mu(n.index) for n in r.hoisted),
            frozenset((psi(k), c) for k, c in r.cuts.items()),
            frozenset((mu(i), tuple(cs)) for i, cs in r.in_cuts.items()),
            tuple(psi(o) for o in r.outputs), r.units, mu(r.start_index), mu(r.end_index),
            tuple(psi(x) for x in r.outer_reads), tuple((psi(x), c) for x, c in r.slices),
            frozenset(mu(v) for v in r.value_nodes), frozenset(mu(c) for c in r.clones))
