"""Multi-stage planning: chunk the region around the peak, re-estimate, repeat until it fits.

Each stage estimates the current plan, searches regions around its peak, selects one, and
re-estimates the whole plan with it. It stops when the estimate fits the budget, or when no
candidate lowers the peak any more: then the budget is unreachable and we say how close we got.
"""
from __future__ import annotations

import time
from typing import Callable

from .bounds import explain
from .costmodel import loop_cost, model_time
from .peak import Estimate, estimate_graph, fusions
from .graph import Graph
from .plan import Loop, Plan, portable
from .schedule import Readers, body_peak_fn, dead_nodes, estimate_plan, loop_step
from .reuse import Memo
from .search import SearchCache, candidates, search_anchors
from .select import MAX_ITERATIONS, QuickCost, balanced, choose, largest_fitting

MAX_STAGES = 256
TRY_PER_STAGE = 4


def plan(graph: Graph, budget: int, original: Estimate | None = None, portable_only: bool = False,
         reuse: bool = True) -> Plan:
    """Multi-stage plan for `budget` bytes. `portable_only`: plan only loops that stay right at
    other input sizes (judged on the shapes at a second pinning, `graph.session.dynamic`).
    `reuse`: a stage whose search would read what an earlier one read, translated to another
    layer, takes that search's choices (`reuse.py`; the same plan, found faster)."""
    t0 = time.perf_counter()
    fused = fusions(graph)
    memo = Memo(graph, fused, portable_only, TRY_PER_STAGE) if reuse else None
    cache = SearchCache() if reuse else None  # flows and regions of earlier stages' searches
    original = original or estimate_graph(graph)
    model_s = model_time(graph)
    loops: list[Loop] = []
    shared: list[tuple[int, int]] = []  # (loop, the loop whose stage's search its stage reused)
    est, order = estimate_plan(graph, loops, fused)
    stages = 0
    while est.peak_bytes > budget and stages < MAX_STAGES:
        stages += 1
        shrunk = _shrink_peak_loop(graph, loops, est, order, budget, fused)
        if shrunk is not None:
            est, order, loops = shrunk
            continue
        regions = [lp.region for lp in loops]
        readers = Readers(graph, regions)
        opaque = {n.index for r in regions for n in r.owned} | readers.dead
        at = order[est.peak_index] if 0 <= est.peak_index < len(order) else None
        at = at if isinstance(at, int) else None
        kept = frozenset(t for r in regions for t in r.inputs)  # what earlier loops read from outside
        found = search_anchors(graph, est, opaque, at)
        quick = QuickCost(graph, est, order, fused, readers, cache.body_fns if cache is not None else None)
        hit = memo.lookup(est, order, quick, readers, loops, opaque, kept, found, budget, model_s) if memo else None
        if hit is not None:  # an earlier stage's search, translated to this layer: the same choices
            ranked, source = hit
        else:
            if memo:
                memo.start()
            need: dict[int, int] = {}
            try:
                if cache is not None:
                    cache.update(graph, opaque, kept)
                cands = candidates(graph, est, opaque, at, kept, found, need, cache)
                if portable_only:
                    cands = [r for r in cands if portable(graph, r, graph.session.dynamic or {})]
                ranked = choose(graph, cands, quick, budget, model_s) if cands else []
            finally:
                if memo:
                    memo.stop()
            if not cands:
                break
            source = None
            if memo:
                memo.record(est, order, quick, readers, loops, opaque, kept, found, cands, ranked, need, len(loops))
        best = None
        # A stage may leave the global peak where it is (identical layers): it must lower the
        # memory where it acts and raise it nowhere. Candidates that cannot are dropped before the
        # TRY_PER_STAGE cut: a loop that does not contain the peak step can still lower it (the
        # buffers ORT holds for reuse across it), and ranks behind those that do.
        ranked = [ch for ch in ranked if ch.predicted_peak < min(est.peak_bytes, ch.replaced_peak)]
        for ch in ranked[:TRY_PER_STAGE]:
            tried = loops + [Loop(ch.region, ch.chunk)]
            try:
                new_est, new_order = estimate_plan(graph, tried, fused)
            except ValueError:  # the loops would depend on each other in a cycle
                continue
            if new_est.peak_bytes <= est.peak_bytes + _recompute_slack(graph, ch.region) and \
                    (best is None or new_est.peak_bytes < best[1].peak_bytes):
                best = (tried, new_est, new_order)
                if ch.fits:
                    break
        if best is None:
            break
        if source is not None:
            shared.append((len(loops), source))
        loops, est, order = best
    if loops:
        est, order, loops = retune(graph, loops, est, order, budget if est.peak_bytes <= budget else est.peak_bytes, fused)
    slow = sum(loop_cost(graph, lp.region, lp.chunk).extra_s for lp in loops) / model_s if loops else 0.0
    return Plan(budget=budget, original=original, final=est, loops=tuple(loops), order=tuple(order),
                dropped=frozenset(dead_nodes(graph, [lp.region for lp in loops])) if loops else frozenset(),
                predicted_slowdown=slow, fits=est.peak_bytes <= budget, search_s=time.perf_counter() - t0, stages=stages,
                bounds=tuple(explain(graph, loops, est, MAX_ITERATIONS)), shared=tuple(shared))


def _recompute_slack(graph: Graph, r) -> int:
    """Bytes a loop that rebuilds a shared tensor (a bias read by every layer) may add to the peak:
    the small tensors it rebuilds from live longer. The shared tensor dies only once its last
    reader rebuilds it, so the first readers' loops leave the peak where it is, a little higher."""
    if not r.clones:
        return 0
    return sum(graph.nbytes(t) for t, _ in r.slices if graph.producer.get(t) not in r.nodes)


def retune(graph: Graph, loops: list[Loop], est: Estimate, order: list, limit: int, fused) -> tuple[Estimate, list, list[Loop]]:
    """Grow each loop's chunk as far as the final plan allows.

    A stage picks its chunk while memory chunked by later stages (or recomputed away) is still
    live, so early loops end up with smaller chunks than they need. Only the loop's own step
    depends on its chunk, so each one is raised to the largest chunk whose step stays <= limit.
    Returns (estimate, order, loops): the grown plan, or the given one when it would not fit.
    """
    pos = {id(it): k for k, it in enumerate(order)}
    grown = []
    for lp in loops:
        r = lp.region
        f = _step_fn(graph, lp, est.timeline[pos[id(lp)]].live_bytes, fused)
        c = largest_fitting(f, lp.chunk, max(lp.chunk, r.units - 1), limit)
        chunk = max(lp.chunk, balanced(r.units, c)) if c is not None and c > lp.chunk else lp.chunk
        grown.append(Loop(r, chunk) if chunk != lp.chunk else lp)
    if all(a is b for a, b in zip(grown, loops)):
        return est, order, loops
    new_est, new_order = estimate_plan(graph, grown, fused)
    if new_est.peak_bytes > limit:
        return est, order, loops
    return new_est, new_order, grown


def _shrink_peak_loop(graph: Graph, loops: list[Loop], est: Estimate, order: list, budget: int, fused):
    """When the peak is a loop's own step, lower that loop's chunk (to fit, or as far as it helps).

    Returns the new (estimate, order, loops), or None when the peak is not a loop or shrinking
    gains nothing."""
    lp = order[est.peak_index] if 0 <= est.peak_index < len(order) else None
    if not isinstance(lp, Loop) or lp.chunk <= 1:
        return None
    r = lp.region
    f = _step_fn(graph, lp, est.timeline[est.peak_index].live_bytes, fused)
    c_min = max(1, -(-r.units // MAX_ITERATIONS))
    c = largest_fitting(f, c_min, lp.chunk - 1, budget)
    if c is None:
        floor = f(c_min)
        if floor >= f(lp.chunk) * 0.98:
            return None
        c = largest_fitting(f, c_min, lp.chunk - 1, int(floor * 1.02) + 1) or c_min
    c = balanced(r.units, c)
    if c >= lp.chunk:
        return None
    shrunk = [Loop(r, c) if x is lp else x for x in loops]
    new_est, new_order = estimate_plan(graph, shrunk, fused)
    if new_est.peak_bytes >= est.peak_bytes:
        return None
    return new_est, new_order, shrunk


def _step_fn(graph: Graph, lp: Loop, step_bytes: int, fused) -> Callable[[int], int]:
    """chunk -> bytes of the loop's step in the plan, given its bytes now (`step_bytes`): only
    the loop's own scratch changes with its chunk."""
    fixed = step_bytes - loop_step(graph, lp, fused).extra_bytes
    out_total = sum(graph.nbytes(t) for t in lp.region.outputs)
    bp = body_peak_fn(graph, lp.region, fused)
    return lambda c: fixed + max(bp(c), out_total)
