"""Multi-stage planning: chunk the region around the peak, re-estimate, repeat until it fits.

Each stage estimates the current plan, searches regions around its peak, selects one, and
re-estimates the whole plan with it. It stops when the estimate fits the budget, or when no
candidate lowers the peak any more: then the budget is unreachable and we say how close we got.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from .chunkflow import Region
from .costmodel import loop_cost, model_time
from .peak import Estimate, estimate_graph, fusions
from .graph import Graph
from .schedule import body_peak_fn, dead_nodes, estimate_plan, region_step
from .search import candidates
from .select import MAX_ITERATIONS, QuickCost, balanced, choose, largest_fitting

MAX_STAGES = 256
TRY_PER_STAGE = 4


@dataclass
class Plan:
    """The regions to chunk and what the estimate predicts for them."""

    budget: int
    original: Estimate
    final: Estimate
    regions: list[Region] = field(default_factory=list)
    predicted_slowdown: float = 0.0
    fits: bool = False
    search_s: float = 0.0
    stages: int = 0


def plan(graph: Graph, budget: int, original: Estimate | None = None,
         allow: Callable[[Region], bool] | None = None) -> Plan:
    """Multi-stage plan for `budget` bytes; `allow` vetoes regions (e.g. not portable to other lengths)."""
    t0 = time.perf_counter()
    fused = fusions(graph)
    original = original or estimate_graph(graph)
    model_s = model_time(graph)
    regions: list[Region] = []
    est, order = estimate_plan(graph, regions, fused)
    stages = 0
    while est.peak_bytes > budget and stages < MAX_STAGES:
        stages += 1
        shrunk = _shrink_peak_loop(graph, regions, est, order, budget, fused)
        if shrunk is not None:
            est, order = shrunk
            continue
        opaque = {n.index for r in regions for n in r.owned} | dead_nodes(graph, regions)
        at = order[est.peak_index] if 0 <= est.peak_index < len(order) else None
        kept = frozenset(t for r in regions for t in r.inputs)  # what earlier loops read from outside
        cands = candidates(graph, est, opaque, at if isinstance(at, int) else None, kept)
        if allow is not None:
            cands = [r for r in cands if allow(r)]
        if not cands:
            break
        quick = QuickCost(graph, est, order, fused, regions)
        ranked = choose(graph, cands, quick, budget, model_s)
        best = None
        for ch in ranked[:TRY_PER_STAGE]:
            # A stage may leave the global peak where it is (identical layers): it must lower the
            # memory where it acts and raise it nowhere.
            if ch.predicted_peak >= min(est.peak_bytes, ch.replaced_peak):
                continue
            ch.region.chunk = ch.chunk
            try:
                new_est, new_order = estimate_plan(graph, regions + [ch.region], fused)
            except ValueError:  # the loops would depend on each other in a cycle
                continue
            if new_est.peak_bytes <= est.peak_bytes and (best is None or new_est.peak_bytes < best[1].peak_bytes):
                best = (ch.region, new_est, new_order)
                if ch.fits:
                    break
        if best is None:
            break
        regions.append(best[0])
        est, order = best[1], best[2]
    if regions:
        est, order = retune(graph, regions, est, order, budget if est.peak_bytes <= budget else est.peak_bytes, fused)
    slow = sum(loop_cost(graph, r, r.chunk).extra_s for r in regions) / model_s if regions else 0.0
    return Plan(budget=budget, original=original, final=est, regions=regions, predicted_slowdown=slow,
                fits=est.peak_bytes <= budget, search_s=time.perf_counter() - t0, stages=stages)


def retune(graph: Graph, regions: list[Region], est: Estimate, order: list, limit: int, fused) -> tuple[Estimate, list]:
    """Grow each loop's chunk as far as the final plan allows.

    A stage picks its chunk while memory chunked by later stages (or recomputed away) is still
    live, so early loops end up with smaller chunks than they need. Only the loop's own step
    depends on its chunk, so each one is raised to the largest chunk whose step stays <= limit.
    """
    old = [r.chunk for r in regions]
    pos = {id(it): k for k, it in enumerate(order)}
    for r in regions:
        f = _step_fn(graph, r, est.timeline[pos[id(r)]].live_bytes, fused)
        c = largest_fitting(f, r.chunk, max(r.chunk, r.units - 1), limit)
        if c is not None and c > r.chunk:
            r.chunk = max(r.chunk, balanced(r.units, c))
    if [r.chunk for r in regions] == old:
        return est, order
    new_est, new_order = estimate_plan(graph, regions, fused)
    if new_est.peak_bytes > limit:
        for r, c in zip(regions, old):
            r.chunk = c
        return est, order
    return new_est, new_order


def _shrink_peak_loop(graph: Graph, regions: list[Region], est: Estimate, order: list, budget: int, fused):
    """When the peak is a loop's own step, lower that loop's chunk (to fit, or as far as it helps).

    Returns the new (estimate, order), or None when the peak is not a loop or shrinking gains
    nothing."""
    it = order[est.peak_index] if 0 <= est.peak_index < len(order) else None
    if not isinstance(it, Region) or it.chunk <= 1:
        return None
    r = it
    f = _step_fn(graph, r, est.timeline[est.peak_index].live_bytes, fused)
    c_min = max(1, -(-r.units // MAX_ITERATIONS))
    c = largest_fitting(f, c_min, r.chunk - 1, budget)
    if c is None:
        floor = f(c_min)
        if floor >= f(r.chunk) * 0.98:
            return None
        c = largest_fitting(f, c_min, r.chunk - 1, int(floor * 1.02) + 1) or c_min
    c = balanced(r.units, c)
    if c >= r.chunk:
        return None
    old = r.chunk
    r.chunk = c
    new_est, new_order = estimate_plan(graph, regions, fused)
    if new_est.peak_bytes >= est.peak_bytes:
        r.chunk = old
        return None
    return new_est, new_order


def _step_fn(graph: Graph, r: Region, step_bytes: int, fused) -> Callable[[int], int]:
    """chunk -> bytes of the loop's step in the plan, given its bytes now (`step_bytes`): only
    the loop's own scratch changes with its chunk."""
    fixed = step_bytes - region_step(graph, r, fused).extra_bytes
    out_total = sum(graph.nbytes(t) for t in r.outputs)
    bp = body_peak_fn(graph, r, fused)
    return lambda c: fixed + max(bp(c), out_total)
