"""Choose, among candidate regions, the one that meets the budget at the least predicted slowdown.

The loop's memory grows monotonically with the chunk size, so the largest chunk that fits is
found by bisection (`largest_fitting`, proved against brute force by a property test). The
chunk is then balanced: the same number of iterations with the smallest equal chunk.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .chunkflow import Region
from .costmodel import loop_cost
from .peak import Estimate
from .graph import Graph
from .schedule import Readers, body_peak_fn

MAX_ITERATIONS = 1024


def largest_fitting(f: Callable[[int], int], lo: int, hi: int, limit: int) -> int | None:
    """Largest c in [lo, hi] with f(c) <= limit, for f non-decreasing; None if even f(lo) > limit."""
    if lo > hi or f(lo) > limit:
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if f(mid) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return lo


def balanced(units: int, chunk: int) -> int:
    """Same iteration count, smallest equal chunk: less memory for the same overhead."""
    iters = -(-units // chunk)
    return -(-units // iters)


@dataclass
class Choice:
    region: Region
    chunk: int
    predicted_peak: int  # quick estimate of the loop step
    replaced_peak: int  # the current peak of the steps the loop replaces
    slowdown: float  # predicted extra time / model time
    fits: bool
    covers: bool = True  # the loop replaces the step where the plan peaks


class QuickCost:
    """Memory of a candidate's loop step, from the current plan's timeline (no full re-estimate)."""

    def __init__(self, graph: Graph, est: Estimate, order, fused, readers: Readers, body_fns: dict | None = None):
        self.graph, self.est, self.fused, self.readers = graph, est, fused, readers
        self.pos = {it: k for k, it in enumerate(order) if isinstance(it, int)}
        self.start_bytes = est.input_bytes
        # region -> body peak function: depends on the region only, so kept across stages
        self.body_fns: dict[Region, Callable[[int], int]] = {} if body_fns is None else body_fns

    def loop_fn(self, r: Region) -> tuple[Callable[[int], int], int, bool]:
        """(chunk -> loop-step bytes, the current peak of the steps the loop replaces, whether
        those steps include the plan's peak)."""
        g = self.graph
        ps = [self.pos[n.index] for n in r.owned]
        p0, p1 = min(ps), max(ps)
        before = self.est.after[p0 - 1] if p0 > 0 else self.start_bytes
        before -= self.freed(r, p0)
        hoisted = sum(g.nbytes(o) for n in r.hoisted if n.index in self.pos and p0 <= self.pos[n.index] <= p1
                      for o in n.outputs if o)
        out_total = sum(g.nbytes(t) for t in r.outputs)
        base = before + hoisted + out_total
        bp = self.body_fns.get(r)
        if bp is None:
            bp = self.body_fns[r] = body_peak_fn(g, r, self.fused)

        def f(c: int) -> int:
            return base + max(bp(c), out_total)

        # A loop that rebuilds the peak node's output per chunk (a bias [1, H, L, L] made once and
        # read by every layer) also acts on the peak: once every reader does, that node is gone.
        covers = p0 <= self.est.peak_index <= p1 or any(self.pos.get(i) == self.est.peak_index for i in r.clones)
        return f, max(p.live_bytes for p in self.est.timeline[p0:p1 + 1]), covers

    def freed(self, r: Region, p0: int) -> int:
        """Bytes live before the loop that die because this region recomputes their last reader."""
        if not r.clones:
            return 0
        newly = self.readers.dead_with(r)
        g = self.graph
        return sum(g.nbytes(o) for p in newly if self.pos.get(p, p0) < p0
                   for o in g.nodes[p].outputs if o and self._live_into(o, p0))

    def _live_into(self, t: str, p0: int) -> bool:
        """Whether `t` is still live before step p0 (a reader at or after it, or a graph output)."""
        g = self.graph
        return t in g.output_names or any(self.pos.get(c, -1) >= p0 for c in g.consumers.get(t, []))


def read_bytes(graph: Graph, r: Region) -> int:
    """Activation bytes a loop reads from outside (weights and constants excluded)."""
    return sum(graph.nbytes(t) for t in r.inputs if not graph.is_weight(t) and graph.const_value(t) is None)


def choose(graph: Graph, cands: list[Region], quick: QuickCost, budget: int, model_s: float) -> list[Choice]:
    """Rank candidates: fitting ones by predicted slowdown, then the rest by the memory they reach."""
    choices = []
    for r in cands:
        f, here, covers = quick.loop_fn(r)
        c_min = max(1, -(-r.units // MAX_ITERATIONS))
        c = largest_fitting(f, c_min, r.units - 1, budget)
        fits = c is not None
        if not fits:
            floor = f(c_min)
            c = largest_fitting(f, c_min, r.units - 1, int(floor * 1.02) + 1) or c_min
        c = balanced(r.units, c)
        slow = loop_cost(graph, r, c).extra_s / model_s
        choices.append(Choice(r, c, f(c), here, slow, fits, covers))
    # A loop that does not contain the peak step cannot lower the peak: those come last. Among loops
    # that do not fit, the activations a loop reads from outside count too: they stay whole, and a
    # later stage cannot cut them any more once their readers are in this loop (a loop from the
    # masking Where on, reading the [L, L] scores whole, looks as low as one that also computes
    # the scores while ORT still holds freed buffers of an earlier layer).
    choices.sort(key=lambda ch: (not ch.covers, not ch.fits,
                                 ch.slowdown if ch.fits else ch.predicted_peak + read_bytes(graph, ch.region),
                                 len(ch.region.body)))
    return choices
