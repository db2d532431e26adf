"""State that lives across the calls of one planning run on one pinned graph.

Facts that are costly to find and do not change while a graph is planned are computed once and
kept here, as declared fields, rather than on the graph object's `__dict__`: what ORT's own
analysis says (`estimate`), the recomputation cones (`chunkflow`), and every tensor's shape at
a second pinning of the inputs (`api`, read by the planner's portability check and the rewrite),
and each node's and loop's step of a plan's estimate (`schedule`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class ConeCache(dict):
    """(tensor, cut) -> recompute cone or None. While `reads` is a set, every key looked up is
    added to it: structural reuse (`reuse.py`) compares the cones a search read."""

    reads: set | None = None

    def __contains__(self, key) -> bool:
        if self.reads is not None:
            self.reads.add(key)
        return dict.__contains__(self, key)


@dataclass
class Session:
    ort: Any = None  # estimate._OrtInfo: ORT-provable shapes, folded constants, fusions, step cache
    cones: ConeCache = field(default_factory=ConeCache)  # chunkflow: (tensor, cut) -> recompute cone or None
    plan_steps: dict = field(default_factory=dict)  # schedule: node index or (region, chunk) -> its Step
    node_reads: list | None = None  # schedule: what each node reads (graph.reads), by node index
    dynamic: dict[str, tuple] | None = None  # tensor -> shape with dynamic input dims doubled; None: unknown
