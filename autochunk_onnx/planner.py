"""Multi-stage planning: chunk the region around the peak, re-estimate, repeat until it fits.

Each stage estimates the current plan, searches regions around its peak, selects one, and
re-estimates the whole plan with it. It stops when the estimate fits the budget, or when no
candidate lowers the peak any more: then the budget is unreachable and we say how close we got.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from .chunkflow import Region
from .costmodel import loop_cost, model_time
from .estimate import Estimate, estimate_graph, fusions
from .graph import Graph
from .schedule import estimate_plan
from .search import candidates
from .select import QuickCost, choose

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


def plan(graph: Graph, budget: int, original: Estimate | None = None) -> Plan:
    t0 = time.perf_counter()
    fused = fusions(graph)
    original = original or estimate_graph(graph)
    model_s = model_time(graph)
    regions: list[Region] = []
    est, order = estimate_plan(graph, regions, fused)
    stages = 0
    while est.peak_bytes > budget and stages < MAX_STAGES:
        stages += 1
        opaque = {n.index for r in regions for n in r.body}
        cands = candidates(graph, est, opaque)
        if not cands:
            break
        quick = QuickCost(graph, est, order, fused)
        ranked = choose(graph, cands, quick, budget, model_s)
        best = None
        for ch in ranked[:TRY_PER_STAGE]:
            # A stage may leave the global peak where it is (identical layers): it must lower the
            # memory where it acts and raise it nowhere.
            if ch.predicted_peak >= est.peak_bytes:
                continue
            ch.region.chunk = ch.chunk
            new_est, new_order = estimate_plan(graph, regions + [ch.region], fused)
            if new_est.peak_bytes <= est.peak_bytes and (best is None or new_est.peak_bytes < best[1].peak_bytes):
                best = (ch.region, new_est, new_order)
                if ch.fits:
                    break
        if best is None:
            break
        regions.append(best[0])
        est, order = best[1], best[2]
    slow = sum(loop_cost(graph, r, r.chunk).extra_s for r in regions) / model_s if regions else 0.0
    return Plan(budget=budget, original=original, final=est, regions=regions, predicted_slowdown=slow,
                fits=est.peak_bytes <= budget, search_s=time.perf_counter() - t0, stages=stages)
